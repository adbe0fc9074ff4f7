//! The impairment settings and the arithmetic that turns them into timings.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Upper bound for `delay_ms` and `jitter_ms`: anything larger is a typo, and
/// bounding it keeps all deadline arithmetic far away from `Instant` overflow.
pub const MAX_DELAY_MS: f64 = 3_600_000.0;

/// No single datagram or chunk is ever scheduled more than this far out, however small
/// `bandwidth_mbit` is, for the same overflow reason as [`MAX_DELAY_MS`].
const MAX_STEP: Duration = Duration::from_secs(3600);

/// What the simulated link does to traffic. Applies to every proxy of a [`crate::WanSim`]
/// and to each direction separately (so `delay_ms: 50` means a 100 ms round trip).
///
/// Every field defaults to 0 / `false` when missing from JSON, so a `PUT` of `{}` clears
/// all impairments. Unknown fields are rejected, so a misspelt name can't silently do
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// One-way propagation delay in milliseconds, each direction.
    #[serde(default)]
    pub delay_ms: f64,
    /// Uniform ± jitter in milliseconds added to `delay_ms` per datagram / chunk.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability (0..=1) that a UDP datagram is dropped.
    #[serde(default)]
    pub loss: f64,
    /// Link rate per direction in Mbit/s (payload bytes, no header overhead); 0 = unlimited.
    #[serde(default)]
    pub bandwidth_mbit: f64,
    /// Probability (0..=1) that a UDP datagram is held back `delay_ms / 2 + 1` ms extra.
    #[serde(default)]
    pub reorder: f64,
    /// Probability (0..=1) that one bit of one random byte of a UDP datagram is flipped.
    #[serde(default)]
    pub corrupt: f64,
    /// Nothing crosses: UDP datagrams are dropped, TCP connections stall (but stay open).
    #[serde(default)]
    pub blackhole: bool,
}

/// An [`Impairment`] field outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct InvalidImpairment {
    /// The field's name as in JSON (the CLI flag is the same with `-` for `_`).
    pub field: &'static str,
    pub value: f64,
    pub reason: &'static str,
}

impl Impairment {
    /// Checks every field is finite and in range.
    pub fn validate(&self) -> Result<(), InvalidImpairment> {
        // Written as `!(in range)` so that NaN, which compares false, is rejected too.
        fn within(
            field: &'static str,
            value: f64,
            max: f64,
            reason: &'static str,
        ) -> Result<(), InvalidImpairment> {
            if value >= 0.0 && value <= max {
                Ok(())
            } else {
                Err(InvalidImpairment {
                    field,
                    value,
                    reason,
                })
            }
        }
        const MS: &str = "must be between 0 and 3600000 milliseconds";
        const P: &str = "must be a probability between 0 and 1";
        within("delay_ms", self.delay_ms, MAX_DELAY_MS, MS)?;
        within("jitter_ms", self.jitter_ms, MAX_DELAY_MS, MS)?;
        within("loss", self.loss, 1.0, P)?;
        within(
            "bandwidth_mbit",
            self.bandwidth_mbit,
            f64::MAX,
            "must be 0 (unlimited) or a positive number of Mbit/s",
        )?;
        within("reorder", self.reorder, 1.0, P)?;
        within("corrupt", self.corrupt, 1.0, P)?;
        Ok(())
    }
}

/// An [`Impairment`] pre-digested for the per-packet path, so that converting
/// milliseconds to `Duration`s happens once per settings change, not per packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub delay: Duration,
    delay_ms: f64,
    jitter_ms: f64,
    bits_per_sec: f64,
    pub loss: f64,
    pub reorder: f64,
    pub corrupt: f64,
    pub blackhole: bool,
    /// Long enough that a held-back datagram is overtaken by those right behind it,
    /// short enough not to look like loss to a transport's RTO.
    pub reorder_extra: Duration,
}

impl Shape {
    pub fn new(imp: &Impairment) -> Shape {
        Shape {
            delay: millis(imp.delay_ms),
            delay_ms: imp.delay_ms,
            jitter_ms: imp.jitter_ms,
            bits_per_sec: imp.bandwidth_mbit * 1e6,
            loss: imp.loss,
            reorder: imp.reorder,
            corrupt: imp.corrupt,
            blackhole: imp.blackhole,
            reorder_extra: millis(imp.delay_ms / 2.0 + 1.0),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.bits_per_sec <= 0.0
    }

    /// How long the link is busy putting `bytes` on the wire.
    pub fn serialization(&self, bytes: usize) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        secs(bytes as f64 * 8.0 / self.bits_per_sec)
    }

    /// Delay plus a fresh jitter sample; never negative.
    pub fn propagation(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter_ms <= 0.0 {
            return self.delay;
        }
        let j = rng.random_range(-self.jitter_ms..=self.jitter_ms);
        millis((self.delay_ms + j).max(0.0))
    }
}

/// True with probability `p`; skips the RNG entirely when the impairment is off.
pub(crate) fn chance(p: f64, rng: &mut impl Rng) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

fn millis(ms: f64) -> Duration {
    secs(ms / 1000.0)
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s)
        .unwrap_or(MAX_STEP)
        .min(MAX_STEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_field() {
        let ok = Impairment {
            delay_ms: 10.0,
            loss: 1.0,
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        for (imp, field) in [
            (
                Impairment {
                    loss: 1.5,
                    ..Default::default()
                },
                "loss",
            ),
            (
                Impairment {
                    delay_ms: -1.0,
                    ..Default::default()
                },
                "delay_ms",
            ),
            (
                Impairment {
                    jitter_ms: f64::NAN,
                    ..Default::default()
                },
                "jitter_ms",
            ),
            (
                Impairment {
                    bandwidth_mbit: f64::INFINITY,
                    ..Default::default()
                },
                "bandwidth_mbit",
            ),
            (
                Impairment {
                    corrupt: -0.1,
                    ..Default::default()
                },
                "corrupt",
            ),
        ] {
            assert_eq!(imp.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn missing_json_fields_are_zero_and_unknown_ones_rejected() {
        let imp: Impairment = serde_json::from_str(r#"{"delay_ms": 5}"#).unwrap();
        assert_eq!(
            imp,
            Impairment {
                delay_ms: 5.0,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<Impairment>(r#"{"dealy_ms": 5}"#).is_err());
    }

    #[test]
    fn serialization_time_follows_bandwidth() {
        let s = Shape::new(&Impairment {
            bandwidth_mbit: 8.0,
            ..Default::default()
        });
        assert_eq!(s.serialization(1000), Duration::from_millis(1));
        // A ridiculous rate is capped rather than overflowing the clock.
        let s = Shape::new(&Impairment {
            bandwidth_mbit: 1e-300,
            ..Default::default()
        });
        assert_eq!(s.serialization(1000), MAX_STEP);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = Shape::new(&Impairment {
            delay_ms: 10.0,
            jitter_ms: 20.0,
            ..Default::default()
        });
        let mut rng = rand::rng();
        let mut seen_zero = false;
        for _ in 0..10_000 {
            let d = s.propagation(&mut rng);
            assert!(d <= Duration::from_millis(30));
            seen_zero |= d.is_zero();
        }
        assert!(seen_zero, "negative samples should clamp to zero");
    }
}
