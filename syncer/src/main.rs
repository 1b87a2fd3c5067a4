//! The `vnest` binary: `vnest syncer ...` runs the syncer, `vnest create/connect/list/delete`
//! are the CLI; `anyhow` lives only at this edge.

use clap::Parser;
use vnest::cli::CliError;
use vnest::config::{Cli, Command};

/// Runs one CLI command on a small runtime; a failure is ONE line on stderr and exit code 1.
fn run_cli<F: std::future::Future<Output = Result<(), CliError>>>(
    run: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Syncer(args) => {
            vnest::memory::limit_arenas();
            let config = args.into_config()?;
            vnest::telemetry::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads)
                .enable_all()
                .build()?;
            runtime.block_on(vnest::app::run(config))
        }
        Command::DetectServiceCidr(args) => {
            vnest::telemetry::init(&args.log_config())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(vnest::cidr::run_detect(args))
        }
        Command::Version => {
            println!("vnest {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Create(args) => run_cli(|| vnest::cli::ops::create(&args)),
        Command::Connect(args) => run_cli(|| vnest::cli::ops::connect(&args)),
        Command::List(args) => run_cli(|| vnest::cli::ops::list(&args)),
        Command::Delete(args) => run_cli(|| vnest::cli::ops::delete(&args)),
        Command::Render(args) => {
            if let Err(e) = vnest::cli::run_render(&args) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Schema { markdown } => {
            if markdown {
                print!("{}", vnest::cli::config::keys_table());
            } else {
                vnest::cli::print_schema();
            }
            Ok(())
        }
    }
}
