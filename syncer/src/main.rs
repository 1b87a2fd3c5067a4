//! The `vnest` binary: `vnest syncer ...` runs the syncer; `anyhow` lives only at this edge.

use clap::Parser;
use vnest::config::{Cli, Command};

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
    }
}
