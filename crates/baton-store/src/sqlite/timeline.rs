//! How timelines are stored: the events one commit appends to one task form one `events` row,
//! whose `items` is a JSON array of compact events. Fewer, smaller rows are most of what makes
//! a commit cheap, and the text stays readable with SQLite's JSON functions.
//!
//! One event is `[at, to, from, subtask, agent, note]`, where
//! - `at` counts from the previous event of the row (the first from 0), with wrapping
//!   arithmetic, so every `i64` comes back exact;
//! - `subtask` is `[capability, n]` for the usual `<capability>::<task_id>::<n>` (the task id is
//!   the row's key) and the id itself otherwise;
//! - trailing `null`s are left out;
//! - what changed is told by the names: no subtask means the task's status, a subtask state
//!   name means the subtask's state, and a phase name an agent's phase (the three sets of
//!   names are disjoint where they meet).
//!
//! Invariant: decoding a row with its task id gives back exactly the events encoded into it,
//! in order.

use baton_core::{AgentId, Change, Event, Phase, SubtaskId, SubtaskState, TaskId, TaskStatus};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Append the `items` of one row holding `events` (all of one task, in order) to `out`.
pub(super) fn encode<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    out.push(b'[');
    let mut previous_at = 0i64;
    for (n, e) in events.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let (from, to) = e.change.names();
        let stored = Stored {
            at: e.at.wrapping_sub(previous_at),
            to,
            from,
            subtask: e
                .change
                .subtask_id()
                .map(|s| StoredSubtask::of(s.as_str(), e.task_id.as_str())),
            agent: e.agent.as_ref().map(AgentId::as_str),
            note: e.note.as_deref(),
        };
        serde_json::to_writer(&mut *out, &stored)?;
        previous_at = e.at;
    }
    out.push(b']');
    Ok(())
}

/// Append the events of one row of `task_id` to `timeline`, in order.
pub(super) fn decode(
    task_id: &TaskId,
    items: &str,
    timeline: &mut Vec<Event>,
) -> serde_json::Result<()> {
    let stored: Vec<Stored<String>> = serde_json::from_str(items)?;
    let mut previous_at = 0i64;
    timeline.reserve(stored.len());
    for s in stored {
        let at = previous_at.wrapping_add(s.at);
        previous_at = at;
        let subtask_id = s.subtask.map(|sub| match sub {
            StoredSubtask::Verbatim(id) => SubtaskId(id),
            StoredSubtask::InTask(capability, n) => {
                SubtaskId(format!("{capability}::{task_id}::{n}"))
            }
        });
        let change = change(subtask_id, s.from.as_deref(), &s.to).ok_or_else(|| {
            <serde_json::Error as de::Error>::custom(format!(
                "unknown change {:?} -> {:?}",
                s.from, s.to
            ))
        })?;
        timeline.push(Event {
            task_id: task_id.clone(),
            at,
            change,
            agent: s.agent.map(AgentId),
            note: s.note,
        });
    }
    Ok(())
}

/// The typed change a stored `(subtask, from, to)` names, if the names are known.
fn change(subtask_id: Option<SubtaskId>, from: Option<&str>, to: &str) -> Option<Change> {
    let Some(subtask_id) = subtask_id else {
        let from = from.map(TaskStatus::parse);
        return Some(Change::Task {
            from: from.map(|f| f.ok_or(())).transpose().ok()?,
            to: TaskStatus::parse(to)?,
        });
    };
    if let Some(to) = SubtaskState::parse(to) {
        let from = SubtaskState::parse(from?)?;
        return Some(Change::Subtask {
            subtask_id,
            from,
            to,
        });
    }
    let from = match from {
        None => None,
        Some(f) => Some(Phase::parse(f)?),
    };
    Some(Change::Phase {
        subtask_id,
        from,
        to: Phase::parse(to)?,
    })
}

/// One event as stored, its strings borrowed (`&str`, encoding) or owned (`String`, decoding).
struct Stored<S> {
    at: i64,
    to: S,
    from: Option<S>,
    subtask: Option<StoredSubtask<S>>,
    agent: Option<S>,
    note: Option<S>,
}

/// A subtask id inside a stored event.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredSubtask<S> {
    Verbatim(S),
    InTask(S, S),
}

impl<'a> StoredSubtask<&'a str> {
    fn of(subtask_id: &'a str, task_id: &str) -> Self {
        let in_task = subtask_id.split_once("::").and_then(|(capability, rest)| {
            let n = rest.strip_prefix(task_id)?.strip_prefix("::")?;
            Some(StoredSubtask::InTask(capability, n))
        });
        in_task.unwrap_or(StoredSubtask::Verbatim(subtask_id))
    }
}

impl Serialize for Stored<&str> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = if self.note.is_some() {
            6
        } else if self.agent.is_some() {
            5
        } else if self.subtask.is_some() {
            4
        } else if self.from.is_some() {
            3
        } else {
            2
        };
        let mut seq = serializer.serialize_seq(Some(len))?;
        seq.serialize_element(&self.at)?;
        seq.serialize_element(self.to)?;
        if len > 2 {
            seq.serialize_element(&self.from)?;
        }
        if len > 3 {
            seq.serialize_element(&self.subtask)?;
        }
        if len > 4 {
            seq.serialize_element(&self.agent)?;
        }
        if len > 5 {
            seq.serialize_element(&self.note)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Stored<String> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(StoredVisitor)
    }
}

struct StoredVisitor;

impl<'de> Visitor<'de> for StoredVisitor {
    type Value = Stored<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event: [at, to, from?, subtask?, agent?, note?]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let at = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let to = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let stored = Stored {
            at,
            to,
            from: seq.next_element()?.flatten(),
            subtask: seq.next_element()?.flatten(),
            agent: seq.next_element()?.flatten(),
            note: seq.next_element()?.flatten(),
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(7, &self));
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_event(task_id: &str, at: i64, to: TaskStatus) -> Event {
        Event {
            task_id: TaskId::from(task_id),
            at,
            change: Change::Task { from: None, to },
            agent: None,
            note: None,
        }
    }

    fn sub_event(task_id: &str, at: i64, subtask: &str) -> Event {
        Event {
            change: Change::Subtask {
                subtask_id: SubtaskId::from(subtask),
                from: SubtaskState::Ready,
                to: SubtaskState::Assigned,
            },
            ..task_event(task_id, at, TaskStatus::Running)
        }
    }

    fn round_trip(task_id: &str, events: &[Event]) -> (String, Vec<Event>) {
        let mut items = Vec::new();
        encode(events, &mut items).unwrap();
        let items = String::from_utf8(items).unwrap();
        let mut decoded = Vec::new();
        decode(&TaskId::from(task_id), &items, &mut decoded).unwrap();
        (items, decoded)
    }

    #[test]
    fn common_events_are_compact() {
        let t = "task-1";
        let events = vec![
            task_event(t, 1_700_000_000_000, TaskStatus::Planned),
            Event {
                agent: Some(AgentId::from("ag-1")),
                ..sub_event(t, 1_700_000_000_005, "code::task-1::2")
            },
        ];
        let (items, decoded) = round_trip(t, &events);
        assert_eq!(
            items,
            r#"[[1700000000000,"planned"],[5,"assigned","ready",["code","2"],"ag-1"]]"#
        );
        assert_eq!(decoded, events);
    }

    #[test]
    fn every_value_comes_back_exact() {
        let t = "t::x";
        let full = |at, subtask: &str| Event {
            agent: Some(AgentId::from("ägent \"q\"")),
            note: Some("line\nnull 🚀".into()),
            ..sub_event(t, at, subtask)
        };
        let phase = |from, to| Event {
            change: Change::Phase {
                subtask_id: SubtaskId::from("a::t::x::1"),
                from,
                to,
            },
            ..task_event(t, 9, TaskStatus::Running)
        };
        let events = vec![
            full(i64::MAX, "a::t::x::1"),
            full(i64::MIN, "::t::x::"),
            full(-1, "a::t::x"),
            full(0, "t::x::1"),
            full(7, "a::t::y::1"),
            full(7, "a::b::t::x::1"),
            Event {
                note: Some("only a note".into()),
                ..task_event(t, 3, TaskStatus::Completed)
            },
            Event {
                agent: Some(AgentId::from("only an agent")),
                ..task_event(t, 3, TaskStatus::Failed)
            },
            Event {
                change: Change::Task {
                    from: Some(TaskStatus::Planned),
                    to: TaskStatus::Running,
                },
                ..task_event(t, -3, TaskStatus::Running)
            },
            phase(None, Phase::Reasoning),
            phase(Some(Phase::Reasoning), Phase::Validating),
        ];
        let (_, decoded) = round_trip(t, &events);
        assert_eq!(decoded, events);
        let (items, decoded) = round_trip(t, &[]);
        assert_eq!((items.as_str(), decoded), ("[]", vec![]));
    }

    #[test]
    fn malformed_rows_are_errors() {
        for items in [
            "",
            "{}",
            "[[]]",
            "[[1]]",
            "[[1,2]]",
            r#"[["1","x"]]"#,
            r#"[[1,"x",null,null,null,null,null]]"#,
            r#"[[1,"x",null,["a"]]]"#,
            r#"[[1,"x",null,7]]"#,
            // Names that are no state or phase of what they are about.
            r#"[[1,"x"]]"#,
            r#"[[1,"running","x"]]"#,
            r#"[[1,"assigned",null,["a","1"]]]"#,
            r#"[[1,"sleeping",null,["a","1"]]]"#,
            r#"[[1,"running","reasoning",["a","1"]]]"#,
        ] {
            let mut out = Vec::new();
            assert!(
                decode(&TaskId::from("t"), items, &mut out).is_err(),
                "{items:?} must not decode"
            );
        }
    }
}
