//! `Pii<T>`: a wrapper for personal data (phone numbers, URI user parts, transcript text, digits).
//!
//! Its `Display` and `Debug` print `{REDACTED}`, so a value can be carried through structs that
//! derive `Debug` or be passed to a `tracing` macro without leaking. The inner value is reachable
//! only through [`Pii::expose`], which makes every place that needs the real value easy to find in
//! review. It does not encrypt or hash anything; storage-side protection lives in the vault.

use std::fmt;

/// Personal data that must never be printed.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pii<T>(T);

impl<T> Pii<T> {
    pub fn new(value: T) -> Self {
        Pii(value)
    }

    /// The real value. Call sites are the audit list of where personal data is used.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Pii<T> {
    fn from(value: T) -> Self {
        Pii(value)
    }
}

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{REDACTED}")
    }
}

impl<T> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{REDACTED}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_redact() {
        let n = Pii::new("+34600111222".to_string());
        assert_eq!(format!("{n}"), "{REDACTED}");
        assert_eq!(format!("{n:?}"), "{REDACTED}");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Call {
            caller: Pii<String>,
        }
        let c = Call { caller: n.clone() };
        assert!(!format!("{c:?}").contains("600111222"));
        assert_eq!(n.expose(), "+34600111222");
    }
}
