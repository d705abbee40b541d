//! Processes a test process starts (the OMAs under test) die with it, however it ends: normal
//! exit, panic, Ctrl-C, SIGTERM or SIGKILL. A watchdog shell in a process group of its own waits
//! for this process to be gone, then SIGKILLs every registered child that is still the process it
//! registered (same pid and start time), and removes its directory.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::mariadb::process_start;

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
for f in "$dir"/*; do [ -e "$f" ] && same "${{f##*/}}" "$(cat "$f")" && kill -9 "${{f##*/}}"; done
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
    if let (Some(dir), Some(start)) = (registry(), process_start(pid)) {
        let _ = std::fs::write(dir.join(pid.to_string()), start);
    }
}

/// `pid` has ended (or is being ended): forget it.
pub fn release(pid: u32) {
    if let Some(dir) = registry() {
        let _ = std::fs::remove_file(dir.join(pid.to_string()));
    }
}
