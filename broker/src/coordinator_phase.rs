//! Where a coordinator that lives on the controller leader (the group and
//! the transaction coordinators) stands, and what it does next as the
//! controller's leadership moves. Pure: each coordinator's loop asks
//! [`next`] with the controller's status and acts on the answer.

use kafka_protocol::error::ResponseError as E;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not the controller leader: requests go elsewhere.
    Inactive,
    /// Becoming active: reading its state after a barrier entry.
    Loading,
    /// Serving, as leader of this controller term.
    Active(u64),
}

impl Phase {
    /// The term it serves, or the error a request gets meanwhile.
    pub fn serving(self) -> Result<u64, i16> {
        match self {
            Phase::Active(t) => Ok(t),
            Phase::Loading => Err(E::CoordinatorLoadInProgress.code()),
            Phase::Inactive => Err(E::NotCoordinator.code()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do this round (loading, or not the leader).
    Wait,
    /// Newly the leader (or of a new term): drop what it held and load.
    Load(u64),
    /// No longer the leader: drop what it held.
    StepDown,
    /// Active and still the leader: do the round's work.
    Serve,
}

/// The next step, given the phase and the controller's status here: the
/// leader whose quorum acknowledged it recently (`fresh`) loads; only one
/// that lost the lead steps down (a stale one waits, keeping its state).
pub fn next(phase: Phase, is_leader: bool, fresh: bool, term: u64) -> Step {
    match phase {
        Phase::Loading => Step::Wait,
        Phase::Active(t) if is_leader && fresh && t != term => Step::Load(term),
        Phase::Inactive if is_leader && fresh => Step::Load(term),
        Phase::Active(_) if !is_leader => Step::StepDown,
        Phase::Active(_) => Step::Serve,
        Phase::Inactive => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_follows_the_controller_leader() {
        use Phase::*;
        assert_eq!(next(Inactive, true, true, 4), Step::Load(4));
        assert_eq!(
            next(Inactive, true, false, 4),
            Step::Wait,
            "not yet acknowledged"
        );
        assert_eq!(next(Inactive, false, false, 4), Step::Wait);
        assert_eq!(next(Loading, true, true, 4), Step::Wait);
        assert_eq!(next(Active(4), true, true, 4), Step::Serve);
        assert_eq!(
            next(Active(4), true, false, 4),
            Step::Serve,
            "a stale leader keeps its state"
        );
        assert_eq!(
            next(Active(3), true, true, 4),
            Step::Load(4),
            "a new term reloads"
        );
        assert_eq!(next(Active(4), false, false, 5), Step::StepDown);
        assert_eq!(Active(7).serving(), Ok(7));
        assert_eq!(Loading.serving(), Err(E::CoordinatorLoadInProgress.code()));
        assert_eq!(Inactive.serving(), Err(E::NotCoordinator.code()));
    }
}
