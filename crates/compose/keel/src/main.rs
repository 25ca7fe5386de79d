//! `keel`: loads the configuration, starts telemetry, and runs the chosen role.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel::Application;
use keel_config::Settings;

/// keel: a complete backend architecture (API, cache, database, and more) in one binary.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (default: ./keel.toml if it exists). KEEL_* environment variables
    /// override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for local state (overrides `data_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system in one process with embedded defaults: the API, the cache, the
    /// SQLite database, the embedded queue and its workers.
    Up,
    /// Run the API role alone (for several instances behind a load balancer).
    Serve,
    /// Run the gateway alone: keel's load balancer and API gateway in front of `keel serve`
    /// instances (`[gateway]` settings: pools, routes, TLS, limits). SIGHUP reloads the
    /// configuration without dropping a connection.
    Gateway,
    /// Run the worker role alone: the outbox relay and the subscriber groups' workers. Run as many
    /// as needed; they compete for the same queues.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Look at the error hospital and deal with its patients: list, show, replay, discard.
    Hospital {
        #[command(subcommand)]
        command: keel::hospital::HospitalCommand,
    },
    /// Manage the identity provider's accounts from a terminal.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an account with roles (by default `admin`): how the first admin comes to be, since
    /// keel has no default password. The password is read from standard input (one line).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// A role to give; repeat for several.
        #[arg(long = "role", default_value = "admin")]
        roles: Vec<String>,
    },
    /// Bring stored addresses to their canonical form and list the pairs of accounts that are
    /// one mailbox (made before keel normalised addresses): an admin resolves each by changing
    /// one address (`PUT /users/{id}`) or deleting one account. Exits 1 while any pair is left.
    Emails,
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        listen: cli.listen,
        gateway: matches!(cli.command, Command::Gateway),
    };
    let settings = match overrides.load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("keel: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Config = cli.command {
        // Show the database actually used, also when it is the default SQLite file.
        let mut shown = settings.clone();
        shown.database.url = Some(settings.database_url());
        shown.queue.url = Some(settings.queue_url());
        print!(
            "{}",
            toml::to_string_pretty(&shown).expect("settings serialize")
        );
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command, settings, overrides, started)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "keel failed");
            eprintln!("keel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the command line says over the configuration file, kept to load it again on SIGHUP.
#[derive(Debug, Clone)]
struct Overrides {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    /// `--listen` names the gateway's listener under `keel gateway`.
    gateway: bool,
}

impl Overrides {
    fn load(&self) -> anyhow::Result<Settings> {
        let mut settings = keel_config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(dir) = &self.data_dir {
            settings.data_dir = dir.clone();
        }
        if let Some(listen) = self.listen {
            if self.gateway {
                settings.gateway.listen = listen;
            } else {
                settings.server.listen = listen;
            }
        }
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

async fn run(
    command: Command,
    settings: Settings,
    overrides: Overrides,
    started: Instant,
) -> anyhow::Result<()> {
    if let Command::Hospital { command } = command {
        // Before telemetry: the command's output and progress bar own the terminal.
        return hospital(command, &settings).await;
    }
    let format = match settings.telemetry.log_format {
        keel_config::LogFormat::Json => keel_telemetry::Format::Json,
        keel_config::LogFormat::Text => keel_telemetry::Format::Text,
    };
    keel_telemetry::init_logging(
        format,
        &settings.telemetry.log_level,
        keel_telemetry::stderr(),
    )?;
    match command {
        Command::Migrate => {
            std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                format!(
                    "cannot create data directory {}",
                    settings.data_dir.display()
                )
            })?;
            let db = keel::database::Database::open(&settings).await?;
            db.migrate().await.context("migration failed")?;
            println!(
                "keel: migrations applied to {}",
                settings.database_url().redacted()
            );
            Ok(())
        }
        Command::Up | Command::Serve => {
            let metrics = keel_telemetry::init_metrics()?;
            let role = if matches!(command, Command::Up) {
                "up"
            } else {
                "serve"
            };
            let mut app = Application::build(settings.clone(), Some(metrics)).await?;
            if matches!(command, Command::Up) {
                app = app.with_workers().await?.with_gateway();
            }
            let addr = app.local_addr();
            tracing::info!(
                role,
                listen = %addr,
                database = %settings.database_url().redacted(),
                strategy = ?settings.cache.users.strategy,
                startup_ms = started.elapsed().as_millis() as u64,
                "keel is ready"
            );
            println!(
                "keel {role}: API on http://{addr}  docs on http://{addr}/docs  (Ctrl-C to stop)"
            );
            if let Some(idp) = app.identity()
                && matches!(idp.accounts().anyone_holds("admin").await, Ok(false))
            {
                println!(
                    "keel {role}: no admin account yet; make the first one with \
                     `keel admin create --email <address>` (the password is read from standard input)"
                );
            }
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Gateway => {
            let metrics = keel_telemetry::init_metrics()?;
            keel::gateway::run(settings, metrics, started, shutdown_signal(), move || {
                overrides.load()
            })
            .await
        }
        Command::Worker => {
            keel_telemetry::init_metrics()?;
            let db = open_database(&settings).await?;
            let queue = keel::queue::Queue::open(&settings).await?;
            let workers = keel::workers::Workers::start(
                &settings,
                queue.broker,
                queue.hospital,
                db.events(),
                db.repo(),
            )
            .await?;
            tracing::info!(
                role = "worker",
                database = %settings.database_url().redacted(),
                queue = %settings.queue_url().redacted(),
                startup_ms = started.elapsed().as_millis() as u64,
                "keel is ready"
            );
            println!(
                "keel worker: handling {} (Ctrl-C to stop)",
                settings.queue_url().redacted()
            );
            shutdown_signal().await;
            workers
                .shutdown(std::time::Duration::from_millis(
                    settings.shutdown.drain_deadline_ms,
                ))
                .await;
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::Create { email, name, roles },
        } => {
            let db = open_database(&settings).await?;
            // The database alone: this process has no users cache. Under write-back, a running
            // instance's journal is out of its sight, as it is of a second instance's.
            let idp = keel::identity::build(
                &settings,
                std::sync::Arc::new(keel_domain::Uncached(db.repo())),
                db.identity(),
                db.events(),
                settings.server.listen,
                // Creating an account revokes nothing: no instance needs telling.
                None,
            )
            .await?
            .context("identity.enabled is off")?;
            eprint!("password for {email} (one line on standard input): ");
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let user = idp
                .accounts()
                .create_account(
                    &name,
                    &email,
                    password,
                    &roles,
                    "cli",
                    chrono::Utc::now().timestamp(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!();
            println!(
                "keel: account {} created with id {} and roles {}",
                user.email.as_str(),
                user.id,
                roles.join(", ")
            );
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::Emails,
        } => {
            let db = open_database(&settings).await?;
            let collisions = db.migrate().await.context("migration failed")?;
            if collisions.is_empty() {
                println!("keel: every stored address is canonical and no two accounts share one");
                return Ok(());
            }
            println!(
                "keel: {} pair(s) of accounts are one mailbox; the first keeps the address",
                collisions.len()
            );
            for c in &collisions {
                println!(
                    "{}\tkeeps: {}\tother: {} (stored as {})",
                    c.canonical.as_str(),
                    c.holder,
                    c.other,
                    c.stored
                );
            }
            anyhow::bail!("resolve each pair by changing one address or deleting one account")
        }
        Command::Config => unreachable!("handled before the runtime starts"),
        Command::Hospital { .. } => unreachable!("handled above"),
    }
}

/// The configured database, its data directory made and, if so configured, migrated.
async fn open_database(settings: &Settings) -> anyhow::Result<keel::database::Database> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let db = keel::database::Database::open(settings).await?;
    if settings.database.migrate_on_start {
        db.migrate()
            .await
            .context("cannot apply database migrations")?;
    }
    Ok(db)
}

/// `keel hospital …` on the configured queue and its hospital.
async fn hospital(
    command: keel::hospital::HospitalCommand,
    settings: &Settings,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let queue = keel::queue::Queue::open(settings).await?;
    let service = keel_hospital::HospitalService::new(queue.hospital, queue.broker);
    keel::hospital::cli(command, &service, &mut std::io::stdout()).await?;
    Ok(())
}

/// Resolves on SIGTERM (a spot VM being reclaimed, an orchestrator stopping us) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
