//! Where two copies of a partition stop holding the same records, from
//! their leader-epoch histories alone (as Kafka's leader-epoch checkpoint
//! is used to truncate a follower): a batch is stamped with the epoch of
//! the leader that wrote it, and an (offset, epoch) pair names one record
//! wherever it is copied. Used by failback to find a returning region's
//! diverged suffix, and by a snapshot install to find a follower's.

/// One copy of a log: its history (epoch, first offset; oldest first, as
/// the broker keeps it), its log start and its log end.
#[derive(Debug, Clone, Copy)]
pub struct LogShape<'a> {
    pub epochs: &'a [(i32, i64)],
    pub log_start: i64,
    pub log_end: i64,
}

impl LogShape<'_> {
    /// The epoch of the record at `offset`, if the history says.
    fn epoch_at(&self, offset: i64) -> Option<i32> {
        entry_at(self.epochs, offset).map(|(e, _)| e)
    }
}

/// The history entry (epoch, first offset) in force at `offset`.
pub fn entry_at(epochs: &[(i32, i64)], offset: i64) -> Option<(i32, i64)> {
    epochs
        .iter()
        .rev()
        .find(|(_, start)| *start <= offset)
        .copied()
}

/// The first offset at which `a` holds a record that `b` does not hold at
/// the same offset: the end of the shorter log, or earlier where the
/// epochs in force differ. Offsets below either log start count as agreed
/// (neither copy holds them any more).
pub fn divergence(a: LogShape<'_>, b: LogShape<'_>) -> i64 {
    let end = a.log_end.min(b.log_end);
    let from = a.log_start.max(b.log_start);
    // The epoch in force only changes where one history starts an epoch:
    // comparing at those points (and at the first common offset) suffices.
    let mut points: Vec<i64> = a
        .epochs
        .iter()
        .chain(b.epochs)
        .map(|(_, start)| *start)
        .filter(|o| *o > from && *o < end)
        .collect();
    points.push(from);
    points.sort_unstable();
    points.dedup();
    for o in points {
        if o >= end {
            break;
        }
        if let (Some(x), Some(y)) = (a.epoch_at(o), b.epoch_at(o)) {
            if x != y {
                return o;
            }
        }
    }
    end.max(from.min(a.log_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape(epochs: &[(i32, i64)], log_end: i64) -> LogShape<'_> {
        LogShape {
            epochs,
            log_start: 0,
            log_end,
        }
    }

    #[test]
    fn a_failed_over_home_diverges_where_the_new_home_took_over() {
        // us-east wrote epoch 3 to offset 200; eu-west held it to 150 when
        // it was promoted and wrote epoch 4 from there.
        let old = [(1, 0), (3, 100)];
        let new = [(1, 0), (3, 100), (4, 150)];
        assert_eq!(divergence(shape(&old, 200), shape(&new, 180)), 150);
        // The new home took no write yet: its log simply ends earlier.
        assert_eq!(divergence(shape(&old, 200), shape(&old, 150)), 150);
        // A copy that is a prefix of the other does not diverge.
        assert_eq!(divergence(shape(&new, 160), shape(&new, 180)), 160);
        // Cut back and caught up again: nothing left.
        assert_eq!(divergence(shape(&new, 180), shape(&new, 180)), 180);
    }

    #[test]
    fn a_log_start_moved_by_retention_is_not_a_divergence() {
        let a = LogShape {
            epochs: &[(3, 120)],
            log_start: 120,
            log_end: 200,
        };
        let b = LogShape {
            epochs: &[(1, 0), (3, 100)],
            log_start: 0,
            log_end: 200,
        };
        assert_eq!(divergence(a, b), 200);
        // An epoch that started below the common start still decides.
        let c = LogShape {
            epochs: &[(2, 90)],
            log_start: 90,
            log_end: 200,
        };
        assert_eq!(divergence(a, c), 120);
    }

    /// A log built as a sequence of (epoch, records) runs, epochs rising.
    fn build(runs: &[(i32, i64)]) -> (Vec<(i32, i64)>, Vec<i32>) {
        let (mut hist, mut per_offset) = (Vec::new(), Vec::new());
        for (e, n) in runs {
            if *n == 0 {
                continue;
            }
            if hist.last().map(|(x, _): &(i32, i64)| *x) != Some(*e) {
                hist.push((*e, per_offset.len() as i64));
            }
            per_offset.extend(std::iter::repeat_n(*e, *n as usize));
        }
        (hist, per_offset)
    }

    proptest! {
        /// Two copies sharing a prefix and then each extended by their own
        /// epochs: the divergence is the first offset whose epochs differ
        /// (or the shorter end), computed offset by offset.
        #[test]
        fn matches_an_offset_by_offset_comparison(
            common in proptest::collection::vec((0i32..3, 0i64..5), 0..4),
            a_more in proptest::collection::vec((0i32..3, 0i64..5), 0..3),
            b_more in proptest::collection::vec((0i32..3, 0i64..5), 0..3),
        ) {
            // Epochs rise along each log; the two suffixes use disjoint epochs.
            let rise = |runs: &[(i32, i64)], base: i32, step: i32| -> Vec<(i32, i64)> {
                let mut e = base;
                runs.iter().map(|(d, n)| { e += d * step + step; (e, *n) }).collect()
            };
            let c = rise(&common, 0, 1);
            let top = c.last().map(|x| x.0).unwrap_or(0);
            let mut a_runs = c.clone();
            a_runs.extend(rise(&a_more, top * 2 + 100, 2));
            let mut b_runs = c.clone();
            b_runs.extend(rise(&b_more, top * 2 + 101, 2));
            let (ah, ao) = build(&a_runs);
            let (bh, bo) = build(&b_runs);
            let want = ao.iter().zip(&bo).position(|(x, y)| x != y)
                .unwrap_or(ao.len().min(bo.len())) as i64;
            prop_assert_eq!(divergence(shape(&ah, ao.len() as i64), shape(&bh, bo.len() as i64)), want);
        }
    }
}
