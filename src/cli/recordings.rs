//! `callveil recordings ...`: the QA / DPO command line over the vault (list, show, export, tag,
//! hold, erase, sweep, audit). Every action that reads or changes a recording is written to the
//! vault's audit log with the acting user (`--actor`, default `$USER`).
//!
//! This is a driver: it reads the wall clock and hands it to the vault, which never reads it.
//! Output goes to stdout (what was asked for), errors to stderr; a configuration error exits 64,
//! any other failure (unknown id, wrong key, tampered blob, legal hold) exits 1 with a sentence
//! saying what is wrong. It must not run inside an async runtime (the vault is synchronous).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::config::{ConfigError, Settings};
use crate::pii::Pii;
use crate::vault::meta::ListFilter;
use crate::vault::{format_time, parse_time, Vault, VaultError, VaultOptions};

#[derive(Debug, Args)]
pub struct RecordingsArgs {
    /// Configuration file [default: config/callveil.toml, else the embedded defaults]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Who is acting, for the audit log [default: $USER]
    #[arg(long, value_name = "NAME", global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: RecordingsCommand,
}

#[derive(Debug, Subcommand)]
pub enum RecordingsCommand {
    /// List recordings (oldest first).
    List {
        /// Started at or after (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Started before (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only recordings with this tag
        #[arg(long)]
        tag: Option<String>,
        /// Only recordings of this retention class
        #[arg(long)]
        class: Option<String>,
    },
    /// Metadata, redaction summary and spans, and the redacted transcript.
    Show { id: String },
    /// Decrypt the redacted audio into a WAV file (one channel per party).
    Export {
        id: String,
        #[arg(long, value_name = "F.wav")]
        out: PathBuf,
    },
    /// Add tags (and remove others with --remove).
    Tag {
        id: String,
        tags: Vec<String>,
        #[arg(long, value_name = "TAG")]
        remove: Vec<String>,
    },
    /// Put a recording under legal hold (no erasure, no retention sweep) or release it.
    Hold {
        id: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Move a recording into another retention class (its expiry is recomputed from its start).
    Class { id: String, class: String },
    /// Erase for good: one recording, or every recording of a caller number.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "subject"])))]
    Erase {
        #[arg(long)]
        id: Option<String>,
        /// Caller number (any format: +34 600 111 222, 0034600111222, sip:+34600111222@host)
        #[arg(long, value_name = "NUMBER")]
        subject: Option<String>,
    },
    /// Erase every recording whose retention has expired (legal holds are kept).
    Sweep,
    /// Print the audit log (every access and change), for one recording or all.
    Audit { id: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Loads `path`, or `config/callveil.toml`, or the embedded defaults.
pub fn load_settings(config: Option<&Path>) -> Result<Settings, ConfigError> {
    match config {
        Some(p) => Settings::load(p),
        None if Path::new(super::run::DEFAULT_CONFIG).exists() => Settings::load(Path::new(super::run::DEFAULT_CONFIG)),
        None => Ok(Settings::embedded()),
    }
}

pub fn open_vault(settings: &Settings) -> Result<Vault, CliError> {
    Ok(Vault::open(VaultOptions::from_settings(settings)?)?)
}

pub fn default_actor() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "cli".into())
}

/// Wall time for the vault: this command is a driver, so it may read the clock.
#[allow(clippy::disallowed_methods)] // the CLI is a driver; the vault takes time as input
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// Maps a result to the exit status, printing the error.
pub fn finish(what: &str, r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Config(e)) => {
            eprintln!("callveil {what}: {e}");
            ExitCode::from(super::EX_USAGE)
        }
        Err(CliError::Usage(e)) => {
            eprintln!("callveil {what}: {e}");
            ExitCode::from(super::EX_USAGE)
        }
        Err(e) => {
            eprintln!("callveil {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(args: RecordingsArgs) -> ExitCode {
    let r = (|| {
        let settings = load_settings(args.config.as_deref())?;
        let vault = open_vault(&settings)?;
        let actor = args.actor.clone().unwrap_or_else(default_actor);
        execute(&vault, &args.command, &actor, wall_clock(), &mut std::io::stdout().lock())
    })();
    finish("recordings", r)
}

fn time_arg(name: &str, v: &Option<String>) -> Result<Option<i64>, CliError> {
    v.as_deref()
        .map(|s| {
            parse_time(s).ok_or_else(|| {
                CliError::Usage(format!("--{name} `{s}`: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)"))
            })
        })
        .transpose()
}

fn duration(start: i64, end: Option<i64>) -> String {
    match end {
        Some(e) => {
            let s = (e - start).max(0) / 1000;
            format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
        }
        None => "-".into(),
    }
}

/// Runs one subcommand against an open vault, writing its output to `out`.
pub fn execute(
    vault: &Vault,
    cmd: &RecordingsCommand,
    actor: &str,
    now: SystemTime,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        RecordingsCommand::List { since, until, tag, class } => {
            let filter = ListFilter {
                since_ms: time_arg("since", since)?,
                until_ms: time_arg("until", until)?,
                tag: tag.clone(),
                class: class.clone(),
            };
            let rows = vault.list(&filter)?;
            writeln!(
                out,
                "{:<32}  {:<20}  {:>8}  {:<9}  {:<10}  {:<20}  {:<4}  TAGS",
                "ID", "STARTED", "LENGTH", "STATE", "CLASS", "EXPIRES", "HOLD"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<32}  {:<20}  {:>8}  {:<9}  {:<10}  {:<20}  {:<4}  {}",
                    r.id,
                    format_time(r.started_at_ms),
                    duration(r.started_at_ms, r.ended_at_ms),
                    r.state.as_str(),
                    r.retention_class,
                    format_time(r.expires_at_ms),
                    if r.legal_hold { "yes" } else { "no" },
                    r.tags.join(",")
                )?;
            }
            writeln!(out, "{} recording(s)", rows.len())?;
        }
        RecordingsCommand::Show { id } => {
            let d = vault.show(id)?;
            let r = &d.row;
            writeln!(out, "id:         {}", r.id)?;
            writeln!(out, "state:      {}", r.state.as_str())?;
            writeln!(out, "started:    {}", format_time(r.started_at_ms))?;
            writeln!(out, "ended:      {}", r.ended_at_ms.map(format_time).unwrap_or_else(|| "-".into()))?;
            writeln!(out, "length:     {}", duration(r.started_at_ms, r.ended_at_ms))?;
            writeln!(out, "route:      {}", r.route)?;
            // An authorised reviewer's view: the parties are shown here, and only here.
            writeln!(out, "call id:    {}", d.parties.call_id.expose())?;
            writeln!(out, "caller:     {}", d.parties.caller.expose())?;
            writeln!(out, "callee:     {}", d.parties.callee.expose())?;
            let channels: Vec<&str> = r
                .channels
                .iter()
                .map(|p| match p {
                    crate::vault::sink::Party::Caller => "caller",
                    crate::vault::sink::Party::Agent => "agent",
                })
                .collect();
            writeln!(out, "channels:   {} at {} Hz", channels.join(", "), r.sample_rate)?;
            match &r.basis {
                crate::vault::sink::LawfulBasis::Consent { ledger_ref } => {
                    writeln!(out, "basis:      consent ({ledger_ref})")?
                }
                crate::vault::sink::LawfulBasis::Other { name } => writeln!(out, "basis:      {name}")?,
            }
            writeln!(out, "retention:  {} until {}", r.retention_class, format_time(r.expires_at_ms))?;
            writeln!(out, "legal hold: {}", if r.legal_hold { "on" } else { "off" })?;
            writeln!(out, "tags:       {}", r.tags.join(", "))?;
            let counts: Vec<String> = d.summary.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "redactions: {} (unverified {:.1} s)",
                counts.join(" "),
                d.summary.unverified_ms as f64 / 1000.0
            )?;
            for (ch, s, e, kind) in &d.spans {
                writeln!(out, "  span ch{ch} {s}-{e} ms {kind}")?;
            }
            writeln!(out, "transcript:")?;
            for t in &d.transcript {
                let who = r.channels.get(usize::from(t.channel)).map_or("?", |p| match p {
                    crate::vault::sink::Party::Caller => "caller",
                    crate::vault::sink::Party::Agent => "agent",
                });
                writeln!(out, "  [{:>7.1}s {who:<6}] {}", t.start_ms as f64 / 1000.0, t.text.expose())?;
            }
            vault.audit(actor, "show", Some(id), "", now)?;
        }
        RecordingsCommand::Export { id, out: path } => {
            vault.export_wav(id, path, actor, now)?;
            writeln!(out, "wrote {} (redacted audio of {id})", path.display())?;
        }
        RecordingsCommand::Tag { id, tags, remove } => {
            if tags.is_empty() && remove.is_empty() {
                return Err(CliError::Usage("give tags to add, or --remove TAG".into()));
            }
            vault.tag(id, tags, remove, actor, now)?;
            writeln!(out, "{id}: tags {}", vault.get(id)?.tags.join(", "))?;
        }
        RecordingsCommand::Hold { id, state } => {
            let on = state == "on";
            vault.set_hold(id, on, actor, now)?;
            writeln!(out, "{id}: legal hold {}", if on { "on" } else { "off" })?;
        }
        RecordingsCommand::Class { id, class } => {
            vault.set_class(id, class, actor, now)?;
            let row = vault.get(id)?;
            writeln!(out, "{id}: class {} (expires {})", row.retention_class, format_time(row.expires_at_ms))?;
        }
        RecordingsCommand::Erase { id: Some(id), .. } => {
            vault.erase(id, "erasure_request", actor, now)?;
            writeln!(out, "{id}: erased (wrapped key, blobs and metadata deleted; tombstone kept)")?;
        }
        RecordingsCommand::Erase { subject: Some(number), .. } => {
            let number = Pii::new(number.clone());
            if crate::vault::crypto::normalise_number(number.expose()).is_none() {
                return Err(CliError::Usage("--subject: the number has no digits".into()));
            }
            let r = vault.erase_subject(&number, actor, now)?;
            for id in &r.erased {
                writeln!(out, "{id}: erased")?;
            }
            for id in &r.held {
                writeln!(out, "{id}: kept (legal hold or still recording)")?;
            }
            writeln!(out, "{} erased, {} kept", r.erased.len(), r.held.len())?;
        }
        RecordingsCommand::Erase { .. } => return Err(CliError::Usage("give --id ID or --subject NUMBER".into())),
        RecordingsCommand::Sweep => {
            let r = vault.sweep(now)?;
            for id in &r.erased {
                writeln!(out, "{id}: expired, erased")?;
            }
            for id in &r.held {
                writeln!(out, "{id}: expired, kept (legal hold)")?;
            }
            writeln!(out, "{} erased, {} held", r.erased.len(), r.held.len())?;
        }
        RecordingsCommand::Audit { id } => {
            for e in vault.audit_log(id.as_deref())? {
                writeln!(
                    out,
                    "{}  {:<16}  {:<14}  {:<32}  {}",
                    format_time(e.at_ms),
                    e.actor,
                    e.action,
                    e.recording_id.as_deref().unwrap_or("-"),
                    e.detail
                )?;
            }
        }
    }
    Ok(())
}
