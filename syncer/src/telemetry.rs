//! Logging: a tracing subscriber writing plain or JSON lines to stderr, filtered by an
//! EnvFilter expression (`--log-filter` / `VNEST_LOG`).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?} (try e.g. `info` or `info,vnest=debug`): {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

pub fn init(cfg: &LogConfig) -> Result<(), TelemetryError> {
    // hickory-server logs every query at info: keep it quiet unless asked for explicitly.
    let expr = if cfg.filter.contains("hickory") {
        cfg.filter.clone()
    } else {
        format!(
            "{},hickory_server=warn,hickory_proto=warn,hickory_resolver=warn",
            cfg.filter
        )
    };
    let filter = EnvFilter::try_new(&expr).map_err(|source| TelemetryError::Filter {
        filter: cfg.filter.clone(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match cfg.format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadySet)
}
