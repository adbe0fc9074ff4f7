//! The home role of one partition copy, as its own Raft log decides it.
//!
//! Which region takes a topic's writes is decided globally (the topic's home
//! and fencing epoch in metadata-sync), but each partition enforces it at
//! apply, from `SetRole` entries in its own log: a produce that reached the
//! log before a demotion cannot apply after it, and a mirror append cannot
//! apply after a promotion, because both are ordered with the data. A
//! partition whose log holds no role entry (its topic never moved) keeps the
//! rule its topic's configs give (`chronik.home.region`).
//!
//! Pure decisions only; `log.rs` stores the role and `raft/sm.rs` applies.

use serde::{Deserialize, Serialize};

/// What a `SetRole` entry made this copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Takes produce (true) or mirror appends (false).
    pub home: bool,
    /// The topic's fencing epoch this role belongs to.
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("this copy is not the topic's home (fenced at home epoch {epoch}); produce to the topic's current home region")]
    NotHome { epoch: u64 },
    #[error("this copy is the topic's home since home epoch {epoch}; it takes no mirrored data")]
    IsHome { epoch: u64 },
    #[error("role for home epoch {proposed} is older than this copy's epoch {current}")]
    StaleEpoch { current: u64, proposed: u64 },
}

/// The role after applying `next` to `current`: epochs never go back. At
/// one epoch a copy may be fenced (home to mirror) and unfenced again (an
/// aborted move): the fence is lifted by the same controller that would
/// have moved the home, so a lifted fence means no move happened; a move
/// raises the epoch, and the old home's copy then wants a mirror role at
/// the new epoch.
pub fn apply(current: Option<Role>, next: Role) -> Result<Role, RoleError> {
    match current {
        Some(c) if next.epoch < c.epoch => Err(RoleError::StaleEpoch {
            current: c.epoch,
            proposed: next.epoch,
        }),
        _ => Ok(next),
    }
}

/// May a produce apply? `None`: no role entry yet, the configs decide.
pub fn check_produce(role: Option<Role>) -> Result<(), RoleError> {
    match role {
        Some(r) if !r.home => Err(RoleError::NotHome { epoch: r.epoch }),
        _ => Ok(()),
    }
}

/// May a mirror append apply?
pub fn check_mirror(role: Option<Role>) -> Result<(), RoleError> {
    match role {
        Some(r) if r.home => Err(RoleError::IsHome { epoch: r.epoch }),
        _ => Ok(()),
    }
}

/// What a topic's state says this region's copies should be, or `None`
/// while the topic has never been fenced or moved (no role entries are
/// written then). `home_here`/`epoch`: the topic's global home; `fenced`: a
/// move away from this region is under way (writes stopped before the
/// mirrors drain); `has_role`: the copy already holds a role entry.
pub fn desired(home_here: bool, epoch: u64, fenced: bool, has_role: bool) -> Option<Role> {
    if fenced {
        return Some(Role { home: false, epoch });
    }
    // Epoch 1 is the creation: no move yet, the configs already agree.
    (epoch > 1 || has_role).then_some(Role {
        home: home_here,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(home: bool, epoch: u64) -> Role {
        Role { home, epoch }
    }

    #[test]
    fn a_promotion_needs_a_new_epoch_and_epochs_never_go_back() {
        assert_eq!(apply(None, r(true, 3)), Ok(r(true, 3)));
        // Fence at the same epoch, then the new home's epoch.
        assert_eq!(apply(Some(r(true, 1)), r(false, 1)), Ok(r(false, 1)));
        assert_eq!(apply(Some(r(false, 1)), r(false, 2)), Ok(r(false, 2)));
        assert_eq!(apply(Some(r(false, 2)), r(true, 3)), Ok(r(true, 3)));
        // A lifted fence gives the role back at the same epoch.
        assert_eq!(apply(Some(r(false, 2)), r(true, 2)), Ok(r(true, 2)));
        assert!(matches!(
            apply(Some(r(true, 4)), r(false, 3)),
            Err(RoleError::StaleEpoch {
                current: 4,
                proposed: 3
            })
        ));
        // Re-applying the same role is harmless.
        assert_eq!(apply(Some(r(true, 4)), r(true, 4)), Ok(r(true, 4)));
    }

    #[test]
    fn only_the_home_takes_produce_and_only_a_mirror_takes_mirrored_data() {
        assert!(check_produce(None).is_ok());
        assert!(check_mirror(None).is_ok());
        assert!(check_produce(Some(r(true, 2))).is_ok());
        assert_eq!(
            check_produce(Some(r(false, 2))),
            Err(RoleError::NotHome { epoch: 2 })
        );
        assert!(check_mirror(Some(r(false, 2))).is_ok());
        assert_eq!(
            check_mirror(Some(r(true, 2))),
            Err(RoleError::IsHome { epoch: 2 })
        );
    }

    #[test]
    fn roles_are_written_only_once_a_topic_is_fenced_or_moves() {
        assert_eq!(desired(true, 1, false, false), None);
        assert_eq!(desired(false, 1, false, false), None);
        assert_eq!(desired(true, 1, true, false), Some(r(false, 1)));
        // The fence lifted: home again at the same epoch.
        assert_eq!(desired(true, 1, false, true), Some(r(true, 1)));
        assert_eq!(desired(true, 2, false, false), Some(r(true, 2)));
        assert_eq!(desired(false, 2, false, false), Some(r(false, 2)));
    }
}
