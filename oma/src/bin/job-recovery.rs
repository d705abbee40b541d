//! `job-recovery`: operator CLI (scan | recover [--dry-run] | status). See `oma::cli`.

#[tokio::main]
async fn main() {
    let code = oma::cli::main(std::env::args().collect()).await;
    std::process::exit(code);
}
