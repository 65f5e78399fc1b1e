//! Superinstructions: a peephole pass over a verified function that replaces common
//! instruction sequences by one op (see the fused variants of [`Op`]).
//!
//! Each fused op sits at the index of the first instruction it covers; the instructions it
//! covers keep their own (plain) ops, so a jump into the middle of a sequence runs the plain
//! ops and means the same. Fusion reads the plain code only, so overlapping candidates are
//! harmless. A fused op reads a local slot only where a definite-assignment analysis proves
//! the slot is set, so it never needs the "unset local falls back to a global" path of
//! `LOAD_LOCAL`.

use crate::program::{BinOp, CatchChain, Op};

/// Replaces sequences in `code` by superinstructions. `plain` is the unfused code.
pub(crate) fn fuse(
    plain: &[Op],
    chains: &[CatchChain],
    params: std::ops::Range<u16>,
    n_slots: u16,
) -> Vec<Op> {
    let assigned = definitely_assigned(plain, chains, params, n_slots);
    let set = |pc: usize, slot: u16| -> bool {
        assigned.get(pc).is_some_and(|bits| bits.contains(slot))
    };
    let local = |pc: usize| -> Option<u16> {
        match plain.get(pc) {
            Some(&Op::LoadLocal { slot, .. }) if set(pc, slot) => Some(slot),
            _ => None,
        }
    };
    let konst = |pc: usize| -> Option<u32> {
        match plain.get(pc) {
            Some(&Op::LoadConst(c) | &Op::Push(c)) => Some(c),
            _ => None,
        }
    };
    let bin = |pc: usize| plain.get(pc).and_then(|&op| BinOp::of(op));
    let cmp = |pc: usize| bin(pc).filter(|op| op.is_comparison());
    let jump_if_false = |pc: usize| match plain.get(pc) {
        Some(&Op::JumpIfFalse(t)) => Some(t),
        _ => None,
    };
    // `STORE_LOCAL d` [+ `LOAD_LOCAL d; POP`]: (dest, len of the tail).
    let store = |pc: usize| -> Option<(u16, u8)> {
        let Some(&Op::StoreLocal(dest)) = plain.get(pc) else { return None };
        let discard = matches!(plain.get(pc + 1), Some(&Op::LoadLocal { slot, .. }) if slot == dest)
            && matches!(plain.get(pc + 2), Some(Op::Pop));
        Some((dest, if discard { 3 } else { 1 }))
    };

    let mut code = plain.to_vec();
    for i in 0..plain.len() {
        let fused = if let (Some(slot), Some(k), Some(op), Some(target)) =
            (local(i), konst(i + 1), cmp(i + 2), jump_if_false(i + 3))
        {
            Some(Op::BranchLocalConst { op, slot, konst: k, target })
        } else if let (Some(a), Some(b), Some(op), Some(target)) =
            (local(i), local(i + 1), cmp(i + 2), jump_if_false(i + 3))
        {
            Some(Op::BranchLocalLocal { op, a, b, target })
        } else if let (Some(slot), Some(k), Some(op), Some((dest, tail))) =
            (local(i), konst(i + 1), bin(i + 2), store(i + 3))
        {
            Some(Op::BinLocalConstStore { op, slot, dest, konst: k, len: 3 + tail })
        } else if let (Some(a), Some(b), Some(op), Some((dest, tail))) =
            (local(i), local(i + 1), bin(i + 2), store(i + 3))
        {
            Some(Op::BinLocalLocalStore { op, a, b, dest, len: 3 + tail })
        } else if let (Some(slot), Some(k), Some(op)) = (local(i), konst(i + 1), bin(i + 2)) {
            Some(Op::BinLocalConst { op, slot, konst: k })
        } else if let (Some(a), Some(b), Some(op)) = (local(i), local(i + 1), bin(i + 2)) {
            Some(Op::BinLocalLocal { op, a, b })
        } else if let (Some(k), Some(op)) = (konst(i), bin(i + 1)) {
            Some(Op::BinConst { op, konst: k })
        } else if let Some(op) = cmp(i) {
            match plain.get(i + 1) {
                Some(&Op::JumpIfFalse(target)) => Some(Op::Branch { op, jump_if: false, target }),
                Some(&Op::JumpIfTrue(target)) => Some(Op::Branch { op, jump_if: true, target }),
                _ => None,
            }
        } else {
            match (plain[i], plain.get(i + 1).copied(), plain.get(i + 2).copied()) {
                (Op::StoreLocal(d), Some(Op::LoadLocal { slot, .. }), Some(Op::Pop)) if slot == d => {
                    Some(Op::StoreLocalDiscard(d))
                }
                (Op::LoadConst(_) | Op::Push(_), Some(Op::Pop), _) => Some(Op::Nop2),
                (Op::LoadLocal { slot, .. }, Some(Op::Pop), _) if set(i, slot) => Some(Op::Nop2),
                (Op::LoadGlobal(global), Some(Op::Call(argc)), _) => Some(Op::CallGlobal { global, argc }),
                (Op::LoadLocal { slot, .. }, Some(Op::Return), _) if set(i, slot) => {
                    Some(Op::ReturnLocal(slot))
                }
                (Op::LoadLocal { slot, .. }, Some(Op::FieldGet(name)), _) if set(i, slot) => {
                    Some(Op::FieldGetLocal { slot, name })
                }
                _ => None,
            }
        };
        if let Some(op) = fused {
            code[i] = op;
        }
    }
    code
}

/// A set of local slots.
#[derive(Clone, PartialEq, Eq)]
struct Slots(Vec<u64>);

impl Slots {
    fn empty(n: u16) -> Slots {
        Slots(vec![0; (n as usize).div_ceil(64)])
    }
    fn contains(&self, slot: u16) -> bool {
        self.0.get(slot as usize / 64).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }
    fn insert(&mut self, slot: u16) {
        if let Some(w) = self.0.get_mut(slot as usize / 64) {
            *w |= 1 << (slot % 64);
        }
    }
    /// Intersects in place; whether anything changed.
    fn intersect(&mut self, other: &Slots) -> bool {
        let mut changed = false;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            let next = *a & b;
            changed |= next != *a;
            *a = next;
        }
        changed
    }
}

/// For each instruction, the slots that hold a value on every path reaching it (parameters
/// from the start, stored names from their `STORE_LOCAL`). `None` for unreachable code.
fn definitely_assigned(
    code: &[Op],
    chains: &[CatchChain],
    params: std::ops::Range<u16>,
    n_slots: u16,
) -> Vec<Option<Slots>> {
    let len = code.len();
    let mut state: Vec<Option<Slots>> = vec![None; len];
    if len == 0 {
        return state;
    }
    let mut entry = Slots::empty(n_slots);
    for p in params {
        entry.insert(p);
    }
    let mut work = vec![0usize];
    state[0] = Some(entry);
    let push = |state: &mut Vec<Option<Slots>>, work: &mut Vec<usize>, to: usize, s: &Slots| {
        if to >= len {
            return;
        }
        match &mut state[to] {
            None => {
                state[to] = Some(s.clone());
                work.push(to);
            }
            Some(existing) => {
                if existing.intersect(s) {
                    work.push(to);
                }
            }
        }
    };
    while let Some(pc) = work.pop() {
        let Some(mut s) = state[pc].clone() else { continue };
        let op = code[pc];
        if let Op::StoreLocal(slot) = op {
            s.insert(slot);
        }
        match op {
            Op::Jump(t) | Op::Catch(t) => push(&mut state, &mut work, t as usize, &s),
            Op::JumpIfTrue(t) | Op::JumpIfFalse(t) => {
                push(&mut state, &mut work, t as usize, &s);
                push(&mut state, &mut work, pc + 1, &s);
            }
            Op::Return | Op::Throw => {}
            Op::TryBegin(chain) => {
                for &(clause, _) in &chains[chain as usize].clauses {
                    push(&mut state, &mut work, clause as usize + 1, &s);
                }
                push(&mut state, &mut work, pc + 1, &s);
            }
            _ => push(&mut state, &mut work, pc + 1, &s),
        }
    }
    state
}

trait SlotsQuery {
    fn contains(&self, slot: u16) -> bool;
}

impl SlotsQuery for Option<Slots> {
    fn contains(&self, slot: u16) -> bool {
        self.as_ref().is_some_and(|s| s.contains(slot))
    }
}
