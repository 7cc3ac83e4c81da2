//! The `callveil` binary: parses the command line and hands over to `cli::*`. Kept thin on
//! purpose; loading configuration, logging and wiring live in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "callveil", version, about = "SIP/RTP proxy that records only with consent and redacts card numbers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until Ctrl-C or SIGTERM.
    Run {
        /// Configuration file [default: config/callveil.toml, else the embedded defaults]
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// QA / DPO access to stored recordings: list, show, export, tag, hold, erase, sweep, audit.
    Recordings(callveil::cli::recordings::RecordingsArgs),
    /// Vault key management: init, rotate.
    Keys(callveil::cli::keys::KeysArgs),
    /// Parse SIP messages from files and print one verdict line per file.
    SipCheck {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(callveil::cli::EX_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Run { config } => callveil::cli::run::run(config.as_deref()),
        Command::SipCheck { files } => callveil::cli::sip_check::run(&files),
        Command::Recordings(args) => callveil::cli::recordings::run(args),
        Command::Keys(args) => callveil::cli::keys::run(args),
    }
}
