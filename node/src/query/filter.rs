//! What a query selects and in which order: [`Filters`] (each field parsed and bounded
//! as it comes in, then matched against stored events), [`ActionMatch`] and [`Order`].
//! The index (`index/`) turns filters into terms and summaries, the shard's query
//! (`shard/query.rs`) runs them, and the API (`api/`) parses them from requests.

use sha2::{Digest, Sha256};

use super::cursor::{truncate, Digest16};
use crate::ledger::validate::{ACTION_BYTES_MAX, ID_BYTES_MAX, RESOURCE_TYPE_BYTES_MAX};
use crate::ledger::{ActorKind, EventRecord, FieldError, Outcome};

/// The order of results, on `(occurred_at, stream, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// The newest events first (the default).
    #[default]
    NewestFirst,
    /// The oldest events first.
    OldestFirst,
}

/// An action filter: exact, or every action under a dotted prefix (`auth.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionMatch {
    Exact(String),
    /// The prefix with its trailing dot (`"auth."` for `auth.*`): matches `auth.login`
    /// and `auth.mfa.verify`, not `auth` nor `authz.check`.
    Prefix(String),
}

/// What a query selects. `None` matches anything; every `Some` must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub actor_id: Option<String>,
    pub actor_kind: Option<ActorKind>,
    pub action: Option<ActionMatch>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub request_id: Option<String>,
    /// Inclusive, on `occurred_at`.
    pub start_time_ns: Option<i64>,
    /// Exclusive, on `occurred_at`.
    pub end_time_ns: Option<i64>,
}

impl Filters {
    pub fn matches(&self, event: &EventRecord) -> bool {
        fn equal(wanted: &Option<String>, value: &str) -> bool {
            wanted.as_deref().is_none_or(|wanted| wanted == value)
        }
        if !equal(&self.actor_id, &event.actor_id)
            || !equal(&self.resource_type, &event.resource_type)
            || !equal(&self.resource_id, &event.resource_id)
            || !equal(&self.request_id, &event.request_id)
        {
            return false;
        }
        if self.actor_kind.is_some_and(|kind| kind != event.actor_kind) {
            return false;
        }
        if self.outcome.is_some_and(|outcome| outcome != event.outcome) {
            return false;
        }
        match &self.action {
            None => {}
            Some(ActionMatch::Exact(action)) if action != &event.action => return false,
            Some(ActionMatch::Prefix(prefix)) if !event.action.starts_with(prefix.as_str()) => {
                return false
            }
            Some(_) => {}
        }
        if self
            .start_time_ns
            .is_some_and(|start| event.occurred_at_ns < start)
        {
            return false;
        }
        if self
            .end_time_ns
            .is_some_and(|end| event.occurred_at_ns >= end)
        {
            return false;
        }
        true
    }

    /// Rules across fields (each field's own rules are checked as it is parsed).
    pub fn check(&self) -> Result<(), FieldError> {
        if let (Some(start), Some(end)) = (self.start_time_ns, self.end_time_ns) {
            if end <= start {
                return Err(FieldError::new(
                    "end_time",
                    "must be after start_time (start_time is inclusive, end_time exclusive)",
                ));
            }
        }
        Ok(())
    }

    /// A digest of the filter and order, carried by cursors so that a cursor continues
    /// only the query that returned it. The limit is not part of it: pages may differ
    /// in size.
    pub fn digest(&self, order: Order) -> Digest16 {
        fn text(hasher: &mut Sha256, value: &Option<String>) {
            match value {
                None => hasher.update([0]),
                Some(value) => {
                    hasher.update([1]);
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
            }
        }
        fn number(hasher: &mut Sha256, value: Option<i64>) {
            match value {
                None => hasher.update([0]),
                Some(value) => {
                    hasher.update([1]);
                    hasher.update(value.to_be_bytes());
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"trail.query.v1");
        hasher.update([match order {
            Order::NewestFirst => 1,
            Order::OldestFirst => 2,
        }]);
        text(&mut hasher, &self.actor_id);
        hasher.update([self.actor_kind.map_or(0, |kind| kind as u8)]);
        match &self.action {
            None => hasher.update([0]),
            Some(ActionMatch::Exact(action)) => {
                hasher.update([1]);
                text(&mut hasher, &Some(action.clone()));
            }
            Some(ActionMatch::Prefix(prefix)) => {
                hasher.update([2]);
                text(&mut hasher, &Some(prefix.clone()));
            }
        }
        text(&mut hasher, &self.resource_type);
        text(&mut hasher, &self.resource_id);
        hasher.update([self.outcome.map_or(0, |outcome| outcome as u8)]);
        text(&mut hasher, &self.request_id);
        number(&mut hasher, self.start_time_ns);
        number(&mut hasher, self.end_time_ns);
        truncate(hasher.finalize().into())
    }
}

/// A string filter: empty means "not set"; otherwise at most `bytes_max` bytes and no
/// control characters (such a value could never match a recorded event).
pub fn text_filter(
    field: &'static str,
    value: &str,
    bytes_max: usize,
) -> Result<Option<String>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(Some(value.to_string()))
}

pub fn actor_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("actor_id", value, ID_BYTES_MAX)
}

pub fn resource_type_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("resource_type", value, RESOURCE_TYPE_BYTES_MAX)
}

pub fn resource_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("resource_id", value, ID_BYTES_MAX)
}

pub fn request_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("request_id", value, ID_BYTES_MAX)
}

/// `auth.login` (exact) or `auth.*` (every action under `auth.`); empty is no filter.
/// Actions follow ingest's rule (`ledger/validate.rs`): segments of `a-z 0-9 _ -` joined
/// by dots; a value that breaks it could never match, so it is refused instead.
pub fn action_filter(value: &str) -> Result<Option<ActionMatch>, FieldError> {
    const RULE: &str = "use an action such as \"auth.login\", or a prefix ending in \".*\" \
                        such as \"auth.*\"; segments are a-z 0-9 _ - joined by dots";
    if value.is_empty() {
        return Ok(None);
    }
    let (dotted, is_prefix) = match value.strip_suffix(".*") {
        Some(prefix) => (prefix, true),
        None => (value, false),
    };
    let segments_ok = dotted.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    });
    if value.len() > ACTION_BYTES_MAX || !segments_ok {
        let shown: String = value.chars().take(40).collect();
        return Err(FieldError::new(
            "action",
            format!("{shown:?} is not an action filter: {RULE}"),
        ));
    }
    Ok(Some(if is_prefix {
        ActionMatch::Prefix(format!("{dotted}."))
    } else {
        ActionMatch::Exact(dotted.to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::sample_event;

    #[test]
    fn action_filters_exact_and_prefix() {
        let prefix = action_filter("auth.*").unwrap().unwrap();
        assert_eq!(prefix, ActionMatch::Prefix("auth.".into()));
        let filters = Filters {
            action: Some(prefix),
            ..Filters::default()
        };
        let with_action = |action: &str| {
            let mut event = sample_event("t", "e");
            event.action = action.to_string();
            event
        };
        assert!(filters.matches(&with_action("auth.login")));
        assert!(filters.matches(&with_action("auth.mfa.verify")));
        assert!(!filters.matches(&with_action("auth")));
        assert!(!filters.matches(&with_action("authz.check")));
        let exact = Filters {
            action: action_filter("auth.login").unwrap(),
            ..Filters::default()
        };
        assert!(exact.matches(&with_action("auth.login")));
        assert!(!exact.matches(&with_action("auth.login.extra")));
        assert_eq!(action_filter("").unwrap(), None);
        for bad in [
            "Auth.Login",
            "auth.",
            "*",
            ".*",
            "auth.*.*",
            "auth..x",
            "auth*",
        ] {
            let error = action_filter(bad).unwrap_err();
            assert_eq!(error.field, "action", "{bad}");
        }
    }

    #[test]
    fn every_filter_field_is_applied() {
        let event = sample_event("t", "e");
        let at = event.occurred_at_ns;
        let cases: Vec<(Filters, bool)> = vec![
            (Filters::default(), true),
            (
                Filters {
                    actor_id: Some("usr_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    actor_id: Some("usr_2".into()),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    actor_kind: Some(ActorKind::Service),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    resource_type: Some("session".into()),
                    resource_id: Some("ses_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    resource_id: Some("ses_2".into()),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    outcome: Some(Outcome::Failure),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    request_id: Some("req_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    start_time_ns: Some(at),
                    end_time_ns: Some(at + 1),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    start_time_ns: Some(at + 1),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    end_time_ns: Some(at),
                    ..Filters::default()
                },
                false,
            ),
        ];
        for (filters, expected) in cases {
            assert_eq!(filters.matches(&event), expected, "{filters:?}");
        }
    }

    #[test]
    fn end_before_start_names_end_time() {
        let filters = Filters {
            start_time_ns: Some(10),
            end_time_ns: Some(10),
            ..Filters::default()
        };
        assert_eq!(filters.check().unwrap_err().field, "end_time");
    }

    #[test]
    fn text_filters_are_bounded() {
        assert_eq!(actor_id_filter("").unwrap(), None);
        assert_eq!(actor_id_filter("usr_1").unwrap(), Some("usr_1".into()));
        assert_eq!(
            actor_id_filter(&"x".repeat(ID_BYTES_MAX + 1))
                .unwrap_err()
                .field,
            "actor_id"
        );
        assert_eq!(
            resource_id_filter("a\u{0}b").unwrap_err().field,
            "resource_id"
        );
    }

    #[test]
    fn digest_changes_with_every_filter_and_the_order() {
        let base = Filters::default();
        let variants = [
            Filters {
                actor_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                actor_kind: Some(ActorKind::User),
                ..Filters::default()
            },
            Filters {
                action: Some(ActionMatch::Exact("a".into())),
                ..Filters::default()
            },
            Filters {
                action: Some(ActionMatch::Prefix("a".into())),
                ..Filters::default()
            },
            Filters {
                resource_type: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                resource_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                outcome: Some(Outcome::Denied),
                ..Filters::default()
            },
            Filters {
                request_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                start_time_ns: Some(0),
                ..Filters::default()
            },
            Filters {
                end_time_ns: Some(0),
                ..Filters::default()
            },
        ];
        let mut seen = vec![
            base.digest(Order::NewestFirst),
            base.digest(Order::OldestFirst),
        ];
        for filters in &variants {
            seen.push(filters.digest(Order::NewestFirst));
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len());
        assert_eq!(
            variants[0].digest(Order::NewestFirst),
            variants[0].clone().digest(Order::NewestFirst)
        );
    }
}
