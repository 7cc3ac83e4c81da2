//! `callveil keys ...`: vault key management. `init` writes a new key file (pepper + first
//! key-encryption key, mode 0600); `rotate [--new ID]` optionally appends a fresh KEK to the key
//! file, making it the active one, then re-wraps every data key that is not under the active KEK.
//! Sealed blobs are never read or rewritten: rotation touches only the wrapped keys.
//!
//! Old KEKs may be removed from the key file once `rotate` reports that nothing is left under
//! them. Key material is never printed. Errors exit 1, configuration errors 64.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::recordings::{default_actor, finish, load_settings, open_vault, wall_clock, CliError};
use crate::vault::crypto::{write_secret_file, Keyring, KEYS_ENV};

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Configuration file [default: config/callveil.toml, else the embedded defaults]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the key file named by `vault.key_file` (refuses to overwrite one).
    Init {
        /// Id of the first key-encryption key
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Re-wrap every data key with the active key-encryption key.
    Rotate {
        /// First append a fresh key-encryption key with this id and make it the active one
        #[arg(long, value_name = "ID")]
        new: Option<String>,
    },
}

pub fn run(args: KeysArgs) -> ExitCode {
    let r = (|| {
        let settings = load_settings(args.config.as_deref())?;
        let key_file = settings.raw.vault.key_file.clone();
        let env_keys = std::env::var_os(KEYS_ENV).is_some();
        match &args.command {
            KeysCommand::Init { id } => {
                if env_keys {
                    return Err(CliError::Usage(format!("{KEYS_ENV} is set: keys come from it, not from a file")));
                }
                let text = zeroize::Zeroizing::new(Keyring::generate_file_text(id));
                // Validates the id before anything is written.
                Keyring::parse(&text, "new key file").map_err(|e| CliError::Usage(e.to_string()))?;
                write_secret_file(&key_file, text.as_bytes(), false)
                    .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", key_file.display())))?;
                println!("created {} (keep it secret and backed up)", key_file.display());
                Ok(())
            }
            KeysCommand::Rotate { new } => {
                if let Some(id) = new {
                    if env_keys {
                        return Err(CliError::Usage(format!(
                            "{KEYS_ENV} is set: add a `kek {id} HEX` entry there instead of --new"
                        )));
                    }
                    let existing = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&key_file)
                            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", key_file.display())))?,
                    );
                    let mut to_append = zeroize::Zeroizing::new(String::new());
                    if !existing.is_empty() && !existing.ends_with('\n') {
                        to_append.push('\n');
                    }
                    to_append.push_str(&Keyring::generate_kek_line(id));
                    // Validate the result (id syntax, duplicates) before touching the file.
                    let combined = zeroize::Zeroizing::new(format!("{}{}", *existing, *to_append));
                    Keyring::parse(&combined, &key_file.display().to_string())
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    write_secret_file(&key_file, to_append.as_bytes(), true)
                        .map_err(|e| CliError::Usage(format!("cannot append to {}: {e}", key_file.display())))?;
                    println!("added key `{id}` to {} as the active key", key_file.display());
                }
                let vault = open_vault(&settings)?;
                let n = vault.rotate_keys(&default_actor(), wall_clock())?;
                println!("re-wrapped {n} data key(s) with key `{}`", vault.keys().active_id());
                Ok(())
            }
        }
    })();
    finish("keys", r)
}
