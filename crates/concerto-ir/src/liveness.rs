//! Moves out of dead locals.
//!
//! A [`Op::Move`] whose source is a local that no path reads again before writing it becomes
//! an [`Op::Take`]: the interpreter moves the value into the destination instead of copying
//! it, so passing a struct, string, array or map on (a method's receiver into the next call's
//! window, say) changes no reference count. Which locals are read again comes from a backward
//! liveness analysis over the function's final register code. Functions with a `try` are left
//! as they are: a handler may read any local after any op that can fail, and the pass keeps no
//! such edges. Reads are [`Op::reads`] (a call's whole window, a struct's fields, a call
//! site's operands) and only the single result register of an op counts as written, so a
//! local is never taken while some path may still read it.

use crate::program::{CallSite, Op, Reg, Shape};

/// A set of registers.
#[derive(Clone, PartialEq)]
struct Regs(Vec<u64>);

impl Regs {
    fn new(size: usize) -> Regs {
        Regs(vec![0; size.div_ceil(64)])
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }

    fn insert(&mut self, r: usize) {
        if let Some(word) = self.0.get_mut(r / 64) {
            *word |= 1 << (r % 64);
        }
    }

    fn remove(&mut self, r: usize) {
        if let Some(word) = self.0.get_mut(r / 64) {
            *word &= !(1 << (r % 64));
        }
    }

    fn contains(&self, r: usize) -> bool {
        self.0.get(r / 64).is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    fn union_with(&mut self, other: &Regs) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// The ops control may go to after op `i` (none after a return or a throw).
fn successors(code: &[Op], i: usize) -> [Option<usize>; 2] {
    let next = (i + 1 < code.len()).then_some(i + 1);
    match code[i] {
        Op::Jump { target } => [Some(target as usize), None],
        Op::JumpIf { target, .. }
        | Op::CmpJump { target, .. }
        | Op::CmpJumpK { target, .. }
        | Op::CmpJumpI { target, .. } => [next, Some(target as usize)],
        Op::Return { .. } | Op::ReturnNil | Op::Throw { .. } => [None, None],
        _ => [next, None],
    }
}

/// Turns every `Move` out of a dead local (a register below `n_slots`) into a `Take`.
/// Leaves functions with a `try` unchanged.
pub(crate) fn take_dead_moves(
    code: &mut [Op],
    n_slots: u16,
    frame_size: u32,
    call_sites: &[CallSite],
    shapes: &[Shape],
) {
    let has_try = code
        .iter()
        .any(|op| matches!(op, Op::TryBegin { .. } | Op::TryEnd | Op::Catch { .. }));
    let has_candidate = code
        .iter()
        .any(|op| matches!(*op, Op::Move { dst, src } if src < n_slots && src != dst));
    if has_try || !has_candidate {
        return;
    }
    let size = frame_size as usize;
    // Each op's reads, worked out once; the fixpoint below allocates nothing.
    let reads: Vec<Vec<(Reg, u32)>> = code.iter().map(|op| op.reads(call_sites, shapes)).collect();
    // live_in[i]: registers some path from op i reads before writing.
    let mut live_in = vec![Regs::new(size); code.len()];
    let mut live = Regs::new(size);
    let mut changed = true;
    while changed {
        changed = false;
        for i in (0..code.len()).rev() {
            live.clear();
            for s in successors(code, i).into_iter().flatten() {
                if let Some(set) = live_in.get(s) {
                    live.union_with(set);
                }
            }
            if let Some(r) = code[i].result_reg() {
                live.remove(usize::from(r));
            }
            for &(first, count) in &reads[i] {
                let first = usize::from(first);
                for r in first..first.saturating_add(count as usize).min(size) {
                    live.insert(r);
                }
            }
            if live != live_in[i] {
                live_in[i].0.copy_from_slice(&live.0);
                changed = true;
            }
        }
    }
    for i in 0..code.len() {
        let Op::Move { dst, src } = code[i] else {
            continue;
        };
        if src >= n_slots || src == dst {
            continue;
        }
        let read_later = successors(code, i).into_iter().flatten().any(|s| {
            live_in
                .get(s)
                .is_some_and(|set| set.contains(usize::from(src)))
        });
        if !read_later {
            code[i] = Op::Take { dst, src };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(dst: Reg, src: Reg) -> Op {
        Op::Move { dst, src }
    }

    #[test]
    fn a_local_read_after_the_move_is_copied_and_a_dead_one_is_taken() {
        // r0, r1 locals; r2.. temporaries.
        let mut code = vec![
            mv(2, 0),
            mv(3, 1),
            Op::CallMethod {
                base: 2,
                argc: 1,
                name: crate::program::NameId::new(0),
            },
            // r1 is read again, r0 is not.
            Op::Bin {
                op: crate::program::BinOp::Add,
                dst: 2,
                a: 2,
                b: 1,
            },
            Op::Return { src: 2 },
        ];
        take_dead_moves(&mut code, 2, 6, &[], &[]);
        assert_eq!(code[0], Op::Take { dst: 2, src: 0 });
        assert_eq!(code[1], mv(3, 1));
    }

    #[test]
    fn a_local_read_on_the_next_round_of_a_loop_is_copied() {
        // 0: r2 = r0 (the loop reads r0 again through the back edge)
        let mut code = vec![
            mv(2, 0),
            Op::CallGlobal {
                base: 2,
                argc: 1,
                global: 0,
            },
            Op::CmpJumpI {
                op: crate::program::BinOp::Lt,
                when: true,
                a: 1,
                target: 0,
                imm: 10,
            },
            Op::Return { src: 1 },
        ];
        take_dead_moves(&mut code, 2, 6, &[], &[]);
        assert_eq!(code[0], mv(2, 0), "read again on the next iteration");
    }

    #[test]
    fn a_local_overwritten_before_any_read_is_taken_and_one_read_on_a_branch_is_not() {
        let mut code = vec![
            // 0: r2 = r0; r0 is overwritten at 3 before any read: taken.
            mv(2, 0),
            // 1: r3 = r1; r1 is read on the branch at 5: copied.
            mv(3, 1),
            Op::JumpIf {
                cond: 2,
                when: true,
                target: 5,
            },
            Op::LoadConst { dst: 0, k: 0 },
            Op::Return { src: 0 },
            Op::Return { src: 1 },
        ];
        take_dead_moves(&mut code, 2, 6, &[], &[]);
        assert_eq!(code[0], Op::Take { dst: 2, src: 0 });
        assert_eq!(code[1], mv(3, 1));
    }

    #[test]
    fn a_function_with_a_try_is_left_alone() {
        let mut code = vec![
            Op::TryBegin { chain: 0, err: 3 },
            mv(2, 0),
            Op::TryEnd,
            Op::Return { src: 2 },
        ];
        let before = code.clone();
        take_dead_moves(&mut code, 2, 6, &[], &[]);
        assert_eq!(code, before);
    }

    #[test]
    fn a_temporary_source_is_never_taken() {
        let mut code = vec![mv(0, 3), Op::Return { src: 0 }];
        take_dead_moves(&mut code, 2, 6, &[], &[]);
        assert_eq!(code[0], mv(0, 3));
    }
}
