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
    /// Apply the embedded database migrations and exit (`--revert` runs down scripts instead)
    Migrate {
        /// Revert instead: the newest applied migration, or with `--to` every one newer than it
        #[arg(long)]
        revert: bool,
        /// With --revert: the version to go back to (0 reverts every migration)
        #[arg(long, requires = "revert")]
        to: Option<i64>,
    },
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
        Command::Migrate { revert: false, .. } => migrate(&settings).await,
        Command::Migrate { revert: true, to } => revert(&settings, to).await,
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
    let pool = connect(settings).await?;
    oma::db::migrate(&pool).await?;
    println!("migrations up to date ({} known)", oma::db::migration_versions().len());
    Ok(())
}

/// `oma-api migrate --revert [--to VERSION]`.
async fn revert(settings: &oma::config::Settings, to: Option<i64>) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let to = match to {
        Some(v) => v,
        // The newest applied one only: back to the one before it.
        None => {
            let applied = oma::db::applied_migrations(&pool).await?;
            applied.iter().rev().nth(1).copied().unwrap_or(0)
        }
    };
    let reverted = oma::db::revert(&pool, to).await?;
    if reverted.is_empty() {
        println!("nothing to revert: no migration newer than {to} is applied");
    } else {
        let list = reverted.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        println!("reverted {} migration(s): {list}; the schema is now at {to}", reverted.len());
    }
    Ok(())
}

async fn connect(settings: &oma::config::Settings) -> anyhow::Result<sqlx::MySqlPool> {
    oma::db::connect(&settings.database_url, 2, settings.db_wait, "OMA_DB_WAIT", std::time::Duration::from_secs(10))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database at {}: {e}",
                oma::config::redact_url(&settings.database_url)
            )
        })
}
