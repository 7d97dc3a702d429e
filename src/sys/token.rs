//! Operation identity, shared by the backends: an io_uring `user_data` or an epoll
//! event's `u64` names the kind of operation and the connection slot it acts on.
//!
//! ```text
//!  63      56 55                    32 31                              0
//! ┌──────────┬────────────────────────┬─────────────────────────────────┐
//! │   kind   │ generation (24 bits)   │ slab key (32 bits)              │
//! └──────────┴────────────────────────┴─────────────────────────────────┘
//! ```
//! The engine compares the generation with the slot's current one, so a completion for
//! a connection that was closed (and whose slot was reused) is recognised and ignored.

use crate::contract::{ConnRef, GEN_MASK};

/// The kind of operation a `user_data` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
    /// The read on the shutdown signalfd.
    Signal = 6,
    /// The read on this worker's eventfd.
    WakeRead = 7,
    /// A wake-up posted into this ring by another ring (IORING_OP_MSG_RING).
    Wake = 8,
    /// A MSG_RING this ring sent that failed (successes post nothing here).
    MsgRing = 9,
    /// An outbound connect.
    Connect = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Accept,
            2 => Kind::Recv,
            3 => Kind::Send,
            4 => Kind::Close,
            5 => Kind::Cancel,
            6 => Kind::Signal,
            7 => Kind::WakeRead,
            8 => Kind::Wake,
            9 => Kind::MsgRing,
            10 => Kind::Connect,
            _ => return None,
        })
    }
}

/// Packs an operation kind and the connection it acts on.
#[inline]
pub(crate) fn encode(kind: Kind, conn: ConnRef) -> u64 {
    (kind as u64) << 56 | u64::from(conn.generation & GEN_MASK) << 32 | u64::from(conn.key)
}

/// Unpacks a `user_data`; `None` for a value the engine never issued.
#[inline]
pub(crate) fn decode(user_data: u64) -> Option<(Kind, ConnRef)> {
    let kind = Kind::from_u8((user_data >> 56) as u8)?;
    let conn = ConnRef {
        key: user_data as u32,
        generation: (user_data >> 32) as u32 & GEN_MASK,
    };
    Some((kind, conn))
}

/// The listener's operations carry no connection.
pub(crate) const NO_CONN: ConnRef = ConnRef {
    key: 0,
    generation: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            Kind::Accept,
            Kind::Recv,
            Kind::Send,
            Kind::Close,
            Kind::Cancel,
            Kind::Connect,
        ] {
            let conn = ConnRef {
                key: u32::MAX - 3,
                generation: GEN_MASK,
            };
            assert_eq!(decode(encode(kind, conn)), Some((kind, conn)));
        }
    }

    #[test]
    fn generation_wraps_within_its_bits() {
        let conn = ConnRef {
            key: 7,
            generation: GEN_MASK + 2,
        };
        let (_, back) = decode(encode(Kind::Recv, conn)).unwrap();
        assert_eq!(
            back,
            ConnRef {
                key: 7,
                generation: 1
            }
        );
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xff << 56), None);
    }
}
