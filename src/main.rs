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
    /// The consent ledger: list decisions (no numbers are printed).
    Consent(callveil::cli::consent::ConsentArgs),
    /// Vault key management: init, rotate.
    Keys(callveil::cli::keys::KeysArgs),
    /// Redact a recording offline: card numbers, security codes, IDs cut from audio and transcript.
    Redact {
        #[arg(long = "in", value_name = "IN.wav")]
        input: PathBuf,
        #[arg(long = "out", value_name = "OUT.wav")]
        output: PathBuf,
        #[arg(long, value_name = "REPORT.json")]
        report: PathBuf,
        /// Configuration file for the [redaction] section [default: the embedded defaults]
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// ggml Whisper model [default: redaction.model]
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        /// en, es or pt [default: redaction.language]
        #[arg(long, value_parser = ["en", "es", "pt"])]
        lang: Option<String>,
        /// Transcription workers [default: redaction.workers]
        #[arg(long)]
        workers: Option<usize>,
    },
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
        Command::Consent(args) => callveil::cli::consent::run(args),
        Command::Redact { input, output, report, config, model, lang, workers } => {
            let language = lang.as_deref().map(|l| match l {
                "es" => callveil::redact::normalize::Lang::Es,
                "pt" => callveil::redact::normalize::Lang::Pt,
                _ => callveil::redact::normalize::Lang::En,
            });
            callveil::cli::redact::run(callveil::cli::redact::Args {
                input,
                output,
                report,
                config,
                model,
                language,
                workers,
            })
        }
    }
}
