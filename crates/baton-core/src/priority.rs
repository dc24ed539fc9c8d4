//! Task priority: 1 (lowest) to 10 (highest); the names `low|normal|high|critical` map onto it.

use serde::{Deserialize, Serialize};

/// A priority from 1 to 10; higher runs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(u8);

impl Priority {
    /// `low`.
    pub const LOW: Priority = Priority(3);
    /// `normal`, the default.
    pub const NORMAL: Priority = Priority(5);
    /// `high`.
    pub const HIGH: Priority = Priority(8);
    /// `critical`.
    pub const CRITICAL: Priority = Priority(10);

    /// A priority from a number 1–10.
    pub fn new(value: u8) -> Option<Priority> {
        (1..=10).contains(&value).then_some(Priority(value))
    }

    /// Parse `low|normal|high|critical` (any case) or a number 1–10 given as text.
    pub fn parse(text: &str) -> Option<Priority> {
        match text.to_ascii_lowercase().as_str() {
            "low" => Some(Self::LOW),
            "normal" | "medium" => Some(Self::NORMAL),
            "high" => Some(Self::HIGH),
            "critical" | "urgent" => Some(Self::CRITICAL),
            other => other.parse::<u8>().ok().and_then(Priority::new),
        }
    }

    /// The numeric value, 1–10.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The name of the band this priority falls into.
    pub fn name(self) -> &'static str {
        match self.0 {
            1..=3 => "low",
            4..=6 => "normal",
            7..=9 => "high",
            _ => "critical",
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::NORMAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(Priority::parse("HIGH"), Some(Priority::HIGH));
        assert_eq!(Priority::parse("critical"), Some(Priority::CRITICAL));
        assert_eq!(Priority::parse("7").map(Priority::value), Some(7));
        assert_eq!(Priority::parse("0"), None);
        assert_eq!(Priority::parse("11"), None);
        assert_eq!(Priority::parse("urgentish"), None);
        assert!(Priority::CRITICAL > Priority::LOW);
        assert_eq!(Priority::new(4).unwrap().name(), "normal");
    }
}
