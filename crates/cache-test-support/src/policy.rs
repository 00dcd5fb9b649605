//! Driving a [`FailurePolicy`] by hand, as a composer would.

use std::cell::Cell;

use cache_core::{Admission, CallOutcome, FailurePolicy, Operation, Ticket};

thread_local! {
    /// The ticket of the call this thread was admitted for last.
    static LAST_TICKET: Cell<Ticket> = const { Cell::new(Ticket::NONE) };
}

/// The policy interface as a test drives it step by step: each report is of
/// the call this thread was admitted for last (its ticket travels with it,
/// as it does in a composer).
pub trait Drive {
    /// Asks to admit a read; remembers its ticket.
    fn admits(&self) -> bool;
    /// Reports how the read admitted last ended.
    fn report(&self, outcome: CallOutcome<'_>);
}

impl<P: FailurePolicy + ?Sized> Drive for P {
    fn admits(&self) -> bool {
        match self.admit(Operation::Read) {
            Admission::Allow(ticket) => {
                LAST_TICKET.with(|last| last.set(ticket));
                true
            }
            Admission::Reject => false,
        }
    }

    fn report(&self, outcome: CallOutcome<'_>) {
        let ticket = LAST_TICKET.with(|last| last.get());
        self.record(Operation::Read, ticket, outcome);
    }
}
