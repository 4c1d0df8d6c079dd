//! Message offsets: the id of a message in its channel's history (`<ms>-<seq>`, a Redis
//! Stream id). Offsets order the messages of one channel; the embedded broker mints them in
//! the same shape so clients never see a difference.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A position in a channel's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    /// Milliseconds part (Unix time at which the message was appended).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl Offset {
    /// The offset before every message (`0-0`).
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        Offset { ms, seq }
    }

    /// Whether this is `0-0`: on a message, one of a namespace without history (no offset;
    /// it orders nothing and the frames leave it out).
    pub fn is_zero(&self) -> bool {
        *self == Offset::ZERO
    }

    /// The greatest offset below `self` (`0-0` stays `0-0`): an exclusive start that includes
    /// `self`.
    pub fn just_before(self) -> Offset {
        match (self.ms, self.seq) {
            (_, 1..) => Offset::new(self.ms, self.seq - 1),
            (1.., 0) => Offset::new(self.ms - 1, u64::MAX),
            _ => Offset::ZERO,
        }
    }

    /// The next free offset at `now_ms`, strictly after `self`.
    pub fn next_after(self, now_ms: u64) -> Offset {
        if now_ms > self.ms {
            Offset { ms: now_ms, seq: 0 }
        } else {
            Offset {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

/// An offset that is not `<ms>-<seq>`.
#[derive(Debug, thiserror::Error)]
#[error("offset must look like <ms>-<seq>, e.g. 1732752000000-0")]
pub struct BadOffset;

impl FromStr for Offset {
    type Err = BadOffset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(BadOffset);
        }
        Ok(Offset {
            ms: ms.parse().map_err(|_| BadOffset)?,
            seq: seq.parse().map_err(|_| BadOffset)?,
        })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Serialize for Offset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let a: Offset = "1732752000000-0".parse().unwrap();
        let b: Offset = "1732752000000-7".parse().unwrap();
        let c: Offset = "1732752000001".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1732752000000-7");
        assert!("x-1".parse::<Offset>().is_err());
        assert!("1-".parse::<Offset>().is_err());
        assert!("".parse::<Offset>().is_err());
    }

    #[test]
    fn next_after_is_strictly_increasing() {
        let a = Offset::new(10, 3);
        assert_eq!(a.next_after(5), Offset::new(10, 4));
        assert_eq!(a.next_after(11), Offset::new(11, 0));
    }

    #[test]
    fn just_before_is_the_greatest_smaller_offset() {
        assert_eq!(Offset::new(10, 3).just_before(), Offset::new(10, 2));
        assert_eq!(Offset::new(10, 0).just_before(), Offset::new(9, u64::MAX));
        assert_eq!(Offset::ZERO.just_before(), Offset::ZERO);
    }
}
