//! `oma-api`: the OMA service. `oma-api [serve]` runs it; `oma-api migrate` applies migrations.

use clap::{Parser, Subcommand};
use oma::config::ServeArgs;
use oma::startup::{shutdown_signal, Application};

#[derive(Parser)]
#[command(name = "oma-api", version, about = "OMA job-recovery and VMA progress poller service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default)
    Serve,
    /// Apply the embedded database migrations and exit
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings = match cli.serve.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oma-api: configuration error: {e}");
            std::process::exit(2);
        }
    };
    oma::telemetry::init(settings.log_format);
    oma::startup::install_panic_hook();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => migrate(&settings).await,
        Command::Serve => match Application::build(settings).await {
            Ok(app) => app.run_until_stopped(shutdown_signal()).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::error!("oma-api failed: {e:#}");
        eprintln!("oma-api: {e:#}");
        std::process::exit(1);
    }
}

async fn migrate(settings: &oma::config::Settings) -> anyhow::Result<()> {
    let pool = oma::db::connect(
        &settings.database_url,
        2,
        settings.db_wait,
        "OMA_DB_WAIT",
        std::time::Duration::from_secs(10),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!("cannot connect to the database at {}: {e}", oma::config::redact_url(&settings.database_url))
    })?;
    oma::db::migrate(&pool).await?;
    let applied = oma::db::MIGRATOR.iter().count();
    println!("migrations up to date ({applied} known)");
    Ok(())
}
