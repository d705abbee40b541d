//! Failpoints for tests of the real process: `OMA_FAILPOINT=<name>` makes the named place fail
//! (panic, or pause: `create-pause` holds a new job 1 s between its commit and its tracking) so a
//! test can check what the supervisor or a scan does about it. Debug builds only: a release
//! build ignores the variable.

/// Whether failpoint `name` is switched on in this process.
pub fn active(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        static SET: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        SET.get_or_init(|| {
            std::env::var("OMA_FAILPOINT").unwrap_or_default().split(',').map(|s| s.trim().to_string()).collect()
        })
        .iter()
        .any(|s| s == name)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
