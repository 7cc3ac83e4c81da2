//! `callveil consent list [--call-id ID] [--subject NUMBER]`: prints consent-ledger rows for a
//! DPO or auditor, oldest first. Rows hold no phone number: a subject is looked up by the keyed
//! hash of the normalised number given on the command line, and only a prefix of that hash is
//! printed. Each listing is written to the vault's audit log (what was asked for, never the
//! number). This is a driver: it reads the wall clock for the audit record. Exit status as for
//! `callveil recordings`: 64 on a configuration or usage error, 1 on any other failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::recordings::{default_actor, finish, load_settings, open_vault, wall_clock, CliError};
use crate::pii::Pii;
use crate::vault::{format_time, ConsentQuery, Vault};

#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// Configuration file [default: config/callveil.toml, else the embedded defaults]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Who is acting, for the audit log [default: $USER]
    #[arg(long, value_name = "NAME", global = true)]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: ConsentCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Print consent-ledger rows (all, one call's, or one caller's), oldest first.
    #[command(group(clap::ArgGroup::new("filter").args(["call_id", "subject"])))]
    List {
        /// SIP Call-ID of the call
        #[arg(long, value_name = "ID")]
        call_id: Option<String>,
        /// Caller number (any format: +34 600 111 222, 0034600111222, sip:+34600111222@host)
        #[arg(long, value_name = "NUMBER")]
        subject: Option<String>,
    },
}

pub fn run(args: ConsentArgs) -> ExitCode {
    let r = (|| {
        let settings = load_settings(args.config.as_deref())?;
        let vault = open_vault(&settings)?;
        let actor = args.actor.clone().unwrap_or_else(default_actor);
        execute(&vault, &args.command, &actor, wall_clock(), &mut std::io::stdout().lock())
    })();
    finish("consent", r)
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub fn execute(
    vault: &Vault,
    cmd: &ConsentCommand,
    actor: &str,
    now: SystemTime,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let ConsentCommand::List { call_id, subject } = cmd;
    let (query, asked) = match (call_id, subject) {
        (Some(c), _) => (ConsentQuery::Call(c.clone()), "call"),
        (None, Some(n)) => (ConsentQuery::Subject(Pii::new(n.clone())), "subject"),
        (None, None) => (ConsentQuery::All, "all"),
    };
    let rows = vault.consent_records(&query)?;
    vault.audit(actor, "consent.list", None, &format!("by={asked} rows={}", rows.len()), now)?;
    writeln!(
        out,
        "{:<35}  {:<20}  {:<24}  {:<10}  {:<16}  {:<12}  {:<9}  {:<16}  {:<32}  {:<16}",
        "LEDGER ID", "DECIDED", "CALL ID", "ROUTE", "BASIS", "METHOD", "DECISION", "PROMPT", "RECORDING", "SUBJECT"
    )?;
    for r in &rows {
        let prompt = match (&r.prompt_id, &r.prompt_language, &r.prompt_sha256) {
            (Some(_), Some(lang), Some(sha)) => format!("{lang}:{}", &sha[..sha.len().min(12)]),
            _ => "-".into(),
        };
        // A prefix is enough to tell subjects apart in a listing; the full hash stays in the store.
        let subject = r.subject_hash.as_deref().map(|h| &h[..h.len().min(16)]).unwrap_or("-");
        writeln!(
            out,
            "{:<35}  {:<20}  {:<24}  {:<10}  {:<16}  {:<12}  {:<9}  {:<16}  {:<32}  {:<16}",
            r.id,
            format_time(r.decided_at_ms),
            r.call_id,
            r.route,
            r.basis,
            r.method,
            r.decision,
            prompt,
            or_dash(&r.recording_id),
            subject
        )?;
    }
    writeln!(out, "{} ledger record(s)", rows.len())?;
    Ok(())
}
