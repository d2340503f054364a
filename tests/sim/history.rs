//! The client history: every call as invoke and completion, ordered by one global event counter
//! (the simulation is single-threaded, so the counter is real-time order; simulated times are
//! kept for people reading a failure).

use std::fmt;

/// A register: the integer property `v` of one graph node, in one tenant.
pub type Key = u64;

/// What a call asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Sets `v` (values are unique per history).
    Write { key: Key, value: i64 },
    /// Sets `v` to `value` if it equals `expect`.
    Cas { key: Key, expect: i64, value: i64 },
    /// Reads `v`; `linearizable` or serializable, through `via` (a node name) or the client's
    /// leader routing (`None`).
    Read {
        key: Key,
        linearizable: bool,
        via: Option<String>,
    },
    /// Creates a node with property `c = tag` in the quota tenant; with `edge_to`, in the same
    /// write an edge from it to that node (one the worker created and has not deleted), so a
    /// later delete of either cascades it.
    Create { tag: i64, edge_to: Option<u64> },
    /// Deletes node `id` (created earlier with `tag`) from the quota tenant.
    Delete { id: u64, tag: i64 },
    /// Moves `amount` from account `from` to account `to` in one write of two operations,
    /// preconditioned on both balances (`expect`): the sum of the accounts never changes.
    Transfer {
        from: Key,
        to: Key,
        amount: i64,
        expect: (i64, i64),
    },
    /// Reads every account in one call (a label page, one point in time); the outcome is the
    /// sum of their balances (`None`: an account was missing).
    Accounts {
        linearizable: bool,
        via: Option<String>,
    },
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet completed (only while running; at the end every call has an outcome).
    Pending,
    /// Done; a read's value (`None`: the register did not exist), a create's node id.
    Ok(Option<i64>),
    /// Definitely had no effect (e.g. a CAS whose precondition failed, a quota refusal).
    Fail(String),
    /// May or may not have taken effect (timeout, unavailable after sending, crash).
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Op {
    /// The client's process: a new one after every unknown outcome (as in Jepsen).
    pub process: u64,
    pub call: Call,
    pub outcome: Outcome,
    /// Global event order of the invocation and the completion.
    pub invoked: u64,
    pub completed: u64,
    /// Simulated milliseconds, for reports.
    pub invoked_ms: u64,
    pub completed_ms: u64,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>7}..{:>7} ms  #{}..#{}] p{} {:?} -> {:?}",
            self.invoked_ms,
            self.completed_ms,
            self.invoked,
            self.completed,
            self.process,
            self.call,
            self.outcome
        )
    }
}

#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    events: u64,
}

impl History {
    pub fn invoke(&mut self, process: u64, call: Call, now_ms: u64) -> usize {
        self.events += 1;
        self.ops.push(Op {
            process,
            call,
            outcome: Outcome::Pending,
            invoked: self.events,
            completed: u64::MAX,
            invoked_ms: now_ms,
            completed_ms: u64::MAX,
        });
        self.ops.len() - 1
    }

    pub fn complete(&mut self, i: usize, outcome: Outcome, now_ms: u64) {
        self.events += 1;
        let op = &mut self.ops[i];
        op.outcome = outcome;
        op.completed = self.events;
        op.completed_ms = now_ms;
    }

    /// Calls still pending when the run stopped count as unknown.
    pub fn close(&mut self) {
        for op in &mut self.ops {
            if op.outcome == Outcome::Pending {
                op.outcome = Outcome::Unknown("still running at the end".into());
            }
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for op in &self.ops {
            s.push_str(&op.to_string());
            s.push('\n');
        }
        s
    }
}
