//! Processes a test process starts (the OMAs under test, a chaos run's own MariaDB) die with it,
//! however it ends: normal exit, panic, Ctrl-C, SIGTERM or SIGKILL. A watchdog shell in a process
//! group of its own waits for this process to be gone, then SIGKILLs every registered child that
//! is still the process it registered (same pid and start time), removes the directories
//! registered with them, and removes its own directory.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::owner::process_start;

static REGISTRY: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The registry directory of this process, with its watchdog running (`None` where it cannot be
/// made: the children then only die with this process's own clean-up).
fn registry() -> Option<&'static PathBuf> {
    REGISTRY
        .get_or_init(|| {
            let me = std::process::id();
            let start = process_start(me)?;
            let dir = std::env::temp_dir().join(format!("oma-test-children-{me}"));
            std::fs::create_dir_all(&dir).ok()?;
            let script = format!(
                r#"dir='{dir}'
same() {{ s=$(sed 's/^.*) //' /proc/$1/stat 2>/dev/null); [ -n "$s" ] && [ "${{s%% *}}" != Z ] && [ "$(echo "$s" | cut -d' ' -f20)" = "$2" ]; }}
while same {me} {start}; do sleep 0.5; done
for f in "$dir"/*; do
  [ -e "$f" ] || continue
  same "${{f##*/}}" "$(head -1 "$f")" && kill -9 "${{f##*/}}"
  tail -n +2 "$f" | while read -r d; do [ -n "$d" ] && rm -rf "$d"; done
done
rm -rf "$dir""#,
                dir = dir.display()
            );
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            Some(dir)
        })
        .as_ref()
}

/// Kill `pid` when this process is gone.
pub fn adopt(pid: u32) {
    adopt_with_dirs(pid, &[]);
}

/// Kill `pid` and remove `dir` (its data) when this process is gone.
pub fn adopt_with_dir(pid: u32, dir: &std::path::Path) {
    adopt_with_dirs(pid, &[dir]);
}

fn adopt_with_dirs(pid: u32, dirs: &[&std::path::Path]) {
    if let (Some(registry), Some(start)) = (registry(), process_start(pid)) {
        let mut text = format!("{start}\n");
        for d in dirs {
            text.push_str(&format!("{}\n", d.display()));
        }
        let _ = std::fs::write(registry.join(pid.to_string()), text);
    }
}

/// `pid` has ended (or is being ended): forget it.
pub fn release(pid: u32) {
    if let Some(dir) = registry() {
        let _ = std::fs::remove_file(dir.join(pid.to_string()));
    }
}
