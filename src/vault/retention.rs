//! Retention policy: named classes with a lifetime, rules that pick a class for a recording (by
//! route, by lawful basis, or by a class a trusted PBX asked for in `X-Retention-Class`), and the
//! expiry computed once, when the recording is created.
//!
//! Pure and sans-IO: it takes the recording's facts and a start time and returns a class and an
//! expiry. It does not delete anything; [`super::Vault::sweep`] applies expiries on a clock it is
//! given, and legal hold is checked there.

use std::time::{Duration, SystemTime};

use regex::Regex;

use super::sink::LawfulBasis;
use crate::config::{ConfigError, RetentionConfig};

/// A retention class: recordings in it are erased `days` after they start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionClass {
    pub name: String,
    pub days: u32,
}

#[derive(Clone, Debug)]
struct Rule {
    route: Option<Regex>,
    basis: Option<String>,
    class: String,
}

/// Validated retention configuration.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    classes: Vec<RetentionClass>,
    default_class: String,
    rules: Vec<Rule>,
    trust_header: bool,
}

/// Why a class was chosen (recorded in the audit log at creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassSource {
    /// The trusted PBX's `X-Retention-Class` header, passed in `RecordingMeta::retention_class`.
    Header,
    /// Rule number N of `retention.rules`.
    Rule(usize),
    Default,
}

/// The lawful basis as rules name it: `consent`, or the configured basis name.
pub fn basis_name(b: &LawfulBasis) -> &str {
    match b {
        LawfulBasis::Consent { .. } => "consent",
        LawfulBasis::Other { name } => name,
    }
}

impl RetentionPolicy {
    pub fn from_config(c: &RetentionConfig) -> Result<RetentionPolicy, ConfigError> {
        let mut classes: Vec<RetentionClass> = Vec::new();
        for (i, cl) in c.classes.iter().enumerate() {
            let key = format!("retention.classes[{i}]");
            if cl.name.is_empty() || !cl.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(ConfigError::new(format!("{key}.name"), "must be non-empty [A-Za-z0-9_-]"));
            }
            if classes.iter().any(|k| k.name == cl.name) {
                return Err(ConfigError::new(format!("{key}.name"), format!("class `{}` is defined twice", cl.name)));
            }
            if cl.days == 0 || cl.days > 36_500 {
                return Err(ConfigError::new(format!("{key}.days"), "must be between 1 and 36500"));
            }
            classes.push(RetentionClass { name: cl.name.clone(), days: cl.days });
        }
        if classes.is_empty() {
            return Err(ConfigError::new("retention.classes", "at least one class is required"));
        }
        if !classes.iter().any(|k| k.name == c.default_class) {
            return Err(ConfigError::new(
                "retention.default_class",
                format!("`{}` is not a defined class", c.default_class),
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            let key = format!("retention.rules[{i}]");
            let route = match &r.route {
                Some(re) => Some(
                    Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| ConfigError::new(format!("{key}.route"), format!("invalid regex: {e}")))?,
                ),
                None => None,
            };
            if route.is_none() && r.basis.is_none() {
                return Err(ConfigError::new(&key, "a rule needs `route` or `basis`"));
            }
            if !classes.iter().any(|k| k.name == r.class) {
                return Err(ConfigError::new(format!("{key}.class"), format!("`{}` is not a defined class", r.class)));
            }
            rules.push(Rule { route, basis: r.basis.clone(), class: r.class.clone() });
        }
        Ok(RetentionPolicy { classes, default_class: c.default_class.clone(), rules, trust_header: c.trust_header })
    }

    /// Whether a class asked for by a trusted PBX (`X-Retention-Class`) is honoured.
    pub fn trusts_header(&self) -> bool {
        self.trust_header
    }

    pub fn class(&self, name: &str) -> Option<&RetentionClass> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Picks the class: a requested (trusted header) class that exists, else the first matching
    /// rule, else the default. An unknown requested class falls through to the rules rather than
    /// failing the recording.
    pub fn classify(
        &self,
        route: &str,
        basis: &LawfulBasis,
        requested: Option<&str>,
    ) -> (&RetentionClass, ClassSource) {
        if self.trust_header {
            if let Some(c) = requested.and_then(|r| self.class(r)) {
                return (c, ClassSource::Header);
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let route_ok = rule.route.as_ref().is_none_or(|re| re.is_match(route));
            let basis_ok = rule.basis.as_deref().is_none_or(|b| b == basis_name(basis));
            if route_ok && basis_ok {
                if let Some(c) = self.class(&rule.class) {
                    return (c, ClassSource::Rule(i));
                }
            }
        }
        // from_config guarantees the default class exists.
        let c = self.class(&self.default_class).unwrap_or(&self.classes[0]);
        (c, ClassSource::Default)
    }

    /// Expiry of a recording of `class` started at `started_at`.
    pub fn expiry(class: &RetentionClass, started_at: SystemTime) -> SystemTime {
        started_at + Duration::from_secs(u64::from(class.days) * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RetentionClassConfig, RetentionRuleConfig};

    fn policy(trust_header: bool) -> RetentionPolicy {
        RetentionPolicy::from_config(&RetentionConfig {
            default_class: "standard".into(),
            trust_header,
            classes: vec![
                RetentionClassConfig { name: "standard".into(), days: 90 },
                RetentionClassConfig { name: "sales".into(), days: 30 },
                RetentionClassConfig { name: "regulated".into(), days: 2555 },
                RetentionClassConfig { name: "complaint".into(), days: 730 },
            ],
            rules: vec![
                RetentionRuleConfig { route: None, basis: Some("legal_obligation".into()), class: "regulated".into() },
                RetentionRuleConfig { route: Some("sales|upsell".into()), basis: None, class: "sales".into() },
            ],
        })
        .unwrap()
    }

    fn consent() -> LawfulBasis {
        LawfulBasis::Consent { ledger_ref: "c1".into() }
    }

    #[test]
    fn header_then_rules_then_default() {
        let p = policy(true);
        assert_eq!(p.classify("sales", &consent(), Some("complaint")).1, ClassSource::Header);
        assert_eq!(p.classify("sales", &consent(), Some("complaint")).0.name, "complaint");
        let (c, s) = p.classify("sales", &consent(), Some("nonexistent"));
        assert_eq!((c.name.as_str(), s), ("sales", ClassSource::Rule(1)));
        let legal = LawfulBasis::Other { name: "legal_obligation".into() };
        assert_eq!(p.classify("sales", &legal, None).0.name, "regulated", "first rule wins");
        assert_eq!(p.classify("salesforce", &consent(), None).0.name, "standard", "route regex is whole-match");
        assert_eq!(p.classify("support", &consent(), None).1, ClassSource::Default);
        // An untrusted deployment ignores the header.
        assert_eq!(policy(false).classify("support", &consent(), Some("complaint")).0.name, "standard");
    }

    #[test]
    fn expiry_is_start_plus_days() {
        let p = policy(true);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let exp = RetentionPolicy::expiry(p.class("sales").unwrap(), t0);
        assert_eq!(exp.duration_since(t0).unwrap(), Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = RetentionConfig { default_class: "nope".into(), ..RetentionConfig::default() };
        assert_eq!(RetentionPolicy::from_config(&c).unwrap_err().key, "retention.default_class");
        let mut c = RetentionConfig::default();
        c.rules.push(RetentionRuleConfig { route: Some("(".into()), basis: None, class: "standard".into() });
        assert_eq!(RetentionPolicy::from_config(&c).unwrap_err().key, "retention.rules[0].route");
        let mut c = RetentionConfig::default();
        c.classes[0].days = 0;
        assert_eq!(RetentionPolicy::from_config(&c).unwrap_err().key, "retention.classes[0].days");
        let mut c = RetentionConfig::default();
        c.rules.push(RetentionRuleConfig { route: None, basis: None, class: "standard".into() });
        assert_eq!(RetentionPolicy::from_config(&c).unwrap_err().key, "retention.rules[0]");
    }
}
