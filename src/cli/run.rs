//! `callveil run [--config PATH]`: load and validate the configuration, install logging, run the
//! proxy until Ctrl-C or SIGTERM.
//!
//! Without `--config` it reads `config/callveil.toml` and, when that file does not exist, the
//! embedded defaults (saying so). A configuration error is printed with the key it concerns and
//! exits 64 (`EX_USAGE`). The proxy itself is built in `app`, not here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Settings};

pub const DEFAULT_CONFIG: &str = "config/callveil.toml";

/// Where the settings came from, for the startup log.
enum Source {
    File(PathBuf),
    Embedded,
}

pub fn run(config: Option<&Path>) -> ExitCode {
    let (settings, source) = match load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("callveil: {e}");
            return ExitCode::from(super::EX_USAGE);
        }
    };
    init_tracing(&settings.raw.log.level);
    match source {
        Source::File(path) => tracing::info!(config = %path.display(), "configuration loaded"),
        Source::Embedded => tracing::info!("{DEFAULT_CONFIG} not found; using the embedded defaults"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callveil: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = crate::app::shutdown_signal();
        crate::app::run(settings, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callveil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&Path>) -> Result<(Settings, Source), ConfigError> {
    match config {
        Some(path) => Ok((Settings::load(path)?, Source::File(path.to_path_buf()))),
        None => {
            let path = Path::new(DEFAULT_CONFIG);
            if path.exists() {
                Ok((Settings::load(path)?, Source::File(path.to_path_buf())))
            } else {
                Ok((Settings::embedded(), Source::Embedded))
            }
        }
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `[log] level` (already validated by the config).
fn init_tracing(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).try_init();
}
