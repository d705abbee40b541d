//! Waiting for a condition in a test: poll it against a deadline and, when it never holds, fail
//! with what was last seen (never a blind sleep).

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `check` every 25 ms until it returns `Ok(Ok(_))`; `Ok(Err(seen))` says what it saw
/// instead. On timeout, the error names `what` and the last thing seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_seen;
    loop {
        match check().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last_seen = seen,
            Err(e) => last_seen = format!("error: {e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
