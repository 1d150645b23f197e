//! The `tandem` command line: argument parsing and the edge where errors
//! become messages and exit codes (the only place `anyhow` is used).

mod client;
mod cluster;
mod rule;
mod sync;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tandem: WebAssembly rules on the effective primary of a pair.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, propagate_version = true)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write, check and dry-run rule modules.
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Send a signal to one or more nodes.
    #[command(subcommand)]
    Signal(client::SignalCommand),
    /// Show a node's full status.
    Status(client::Target),
    /// Let the secondary hand back to the primary (manual failback).
    Failback(client::Target),
    /// Hand the active role to the other node of the pair.
    Switchover(client::Target),
    /// A cluster member's view and commands (DESIGN.md §7).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Table sync: now, or an export for inspection and backups.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
    /// Run a node.
    Serve {
        /// The config file.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Print an example config, or check a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make a shared secret for a pair.
    #[command(subcommand)]
    Secret(SecretCommand),
}

/// `tandem secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random shared secret (32 random bytes as 64 hex digits)
    /// for `[failover] secret` on both nodes, or TANDEM_PAIR_SECRET.
    New,
}

/// `tandem config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented example config.
    Example {
        /// A member of a three-node cluster on etcd instead of a
        /// standalone node.
        #[arg(long)]
        cluster: bool,
    },
    /// Validate a config file and print what it resolves to.
    Check {
        /// The config file.
        file: std::path::PathBuf,
    },
}

/// Parse the arguments, run the command, and turn an error into a message
/// on stderr and exit code 1 (2 for usage errors, from clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Rule(cmd) => rule::run(cmd),
        Command::Signal(cmd) => client::signal(cmd),
        Command::Status(t) => client::status(&t),
        Command::Cluster(c) => cluster::run(c),
        Command::Sync(cmd) => sync::run(cmd),
        Command::Failback(t) => client::pair_command(&t, "failback"),
        Command::Switchover(t) => client::pair_command(&t, "switchover"),
        Command::Serve { config } => {
            let config = crate::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::server::run(
                config,
                crate::shutdown::os_signal(),
                |_, _| {},
            ))?;
            Ok(())
        }
        Command::Secret(SecretCommand::New) => {
            let secret = crate::config::new_secret()
                .map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
            println!("{secret}");
            Ok(())
        }
        Command::Config(ConfigCommand::Example { cluster }) => {
            print!(
                "{}",
                if cluster {
                    crate::config::CLUSTER_EXAMPLE
                } else {
                    crate::config::EXAMPLE
                }
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = crate::config::Config::load(&file)?;
            println!("{}: ok", file.display());
            println!("  node: {} ({})", config.node.name, config.role.as_str());
            println!("  data_dir: {}", config.node.data_dir.display());
            println!("  admin: {}", config.admin.listen);
            if let Some(c) = &config.cluster {
                println!(
                    "  cluster: {} on {} (groups: {})",
                    c.name,
                    c.etcd.join(", "),
                    c.groups_of(&config.node.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!(
                "  sinks: {}",
                config
                    .sinks
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
    }
}

/// Logs go to stderr (stdout is for command output): text by default, JSON
/// lines with `--log-json`; `RUST_LOG` filters (default `info`).
fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
