//! Hybrid logical clock: wall-clock milliseconds plus a logical counter.
//! It orders writes that version vectors call concurrent, close to real
//! time, while never going backwards when a wall clock does. The wall time
//! is always an argument: the merge rules stay deterministic and testable.

/// A timestamp, and also a clock's state (the last timestamp it issued).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    pub physical_ms: u64,
    pub logical: u32,
}

impl Hlc {
    pub const ZERO: Hlc = Hlc {
        physical_ms: 0,
        logical: 0,
    };

    pub fn new(physical_ms: u64, logical: u32) -> Hlc {
        Hlc {
            physical_ms,
            logical,
        }
    }

    /// The smallest timestamp after `self`. A logical counter that would
    /// overflow spills into the next millisecond rather than wrapping.
    pub fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc {
                physical_ms: self.physical_ms,
                logical,
            },
            None => Hlc {
                physical_ms: self.physical_ms.saturating_add(1),
                logical: 0,
            },
        }
    }

    /// A local event at wall time `wall_ms`: later than anything this clock
    /// issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.physical_ms {
            Hlc::new(wall_ms, 0)
        } else {
            self.successor()
        };
        *self = next;
        next
    }

    /// A timestamp from elsewhere arrived at wall time `wall_ms`: the clock
    /// moves past it, so whatever this region writes next is ordered after
    /// what it has seen.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Hlc {
        let seen = (*self).max(remote);
        let next = if wall_ms > seen.physical_ms {
            Hlc::new(wall_ms, 0)
        } else {
            seen.successor()
        };
        *self = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_follows_the_wall_clock_and_never_goes_back() {
        let mut c = Hlc::ZERO;
        assert_eq!(c.now(100), Hlc::new(100, 0));
        assert_eq!(c.now(100), Hlc::new(100, 1));
        // The wall clock stepped back: the logical part keeps order.
        assert_eq!(c.now(90), Hlc::new(100, 2));
        assert_eq!(c.now(101), Hlc::new(101, 0));
    }

    #[test]
    fn observe_moves_past_the_remote_timestamp() {
        let mut c = Hlc::ZERO;
        c.now(100);
        assert_eq!(c.observe(Hlc::new(200, 5), 150), Hlc::new(200, 6));
        assert_eq!(c.observe(Hlc::new(50, 9), 150), Hlc::new(200, 7));
        assert_eq!(c.observe(Hlc::new(200, 1), 300), Hlc::new(300, 0));
    }

    #[test]
    fn logical_overflow_spills_into_the_next_millisecond() {
        assert_eq!(Hlc::new(7, u32::MAX).successor(), Hlc::new(8, 0));
    }
}
