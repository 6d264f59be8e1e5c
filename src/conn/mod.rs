//! The connection lifecycle vocabulary: the explicit states a connection moves
//! through, the reasons it can end (each with the side to blame), and the
//! connection table whose entries are guards owned by the connection's task.

pub mod log_limit;
mod table;

pub use table::{AuditRow, CloseError, ConnEntry, ConnGuard, ConnSnapshot, ConnTable, TlvSnapshot};

pub use crate::lifecycle::{ConnState, EndReason, Side};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_states_are_listed_in_discriminant_order() {
        for (i, r) in EndReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut names: Vec<&str> = EndReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), EndReason::COUNT);
        for (i, s) in ConnState::ALL.iter().enumerate() {
            assert_eq!(ConnState::from_u8(i as u8), *s);
        }
    }
}
