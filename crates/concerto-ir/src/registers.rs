//! Stack form → register form.
//!
//! The verifier gives every reachable instruction a fixed operand-stack height, so the
//! stack position `k` is simply register `n_slots + k` of the frame. Each stack op becomes
//! (at most a few) register ops; then a few local rewrites remove the copies the stack
//! discipline forces:
//!
//! - copy propagation: `Move{t ← x}` of a local `x` whose only reader is the next use of `t`
//!   is folded into that use (which then reads `x`); so a temporary operand is always consumed
//!   by the op that reads it, and the interpreter may move it out instead of copying;
//! - constants and callees: `LoadConst{t ← k}` feeding the right operand of an operation
//!   becomes its constant operand (`BinK`, `CmpJumpK`); `LoadGlobal{t ← g}` feeding a call's
//!   callee becomes `CallGlobal`;
//! - destination forwarding: an op writing `t` followed by `Move{y ← t}` writes `y`;
//! - dead temporaries: a pure write of `t` that is popped unread disappears;
//! - compare-and-branch: a comparison feeding a conditional jump becomes `CmpJump`.
//!
//! Rewrites never cross a jump target (a block boundary) or a control transfer, and a
//! temporary is only folded when the stack heights prove it dead afterwards. Finally no-ops
//! are removed and jump targets, handler chains and spans are renumbered.

use crate::program::{CallSite, CatchChain, Op, Reg, Shape, Span};
use crate::stack::{Heights, SOp, call_site_effect};

/// The register code of one function.
pub(crate) struct RegisterCode {
    pub(crate) code: Vec<Op>,
    pub(crate) spans: Vec<Span>,
    pub(crate) ir_pc: Vec<u32>,
    pub(crate) chains: Vec<CatchChain>,
    pub(crate) frame_size: u32,
}

/// An op under construction.
#[derive(Clone, Copy)]
struct Slot {
    op: Option<Op>,
    /// The IR instruction it came from.
    ir: u32,
    /// Operand-stack height after it.
    h_out: u32,
    /// Part of a multi-op expansion: never rewritten.
    pinned: bool,
    /// First op of a jump target (a block starts here).
    boundary: bool,
}

pub(crate) struct Input<'a> {
    pub(crate) stack: &'a [SOp],
    pub(crate) chains: &'a [CatchChain],
    pub(crate) heights: &'a Heights,
    pub(crate) shapes: &'a [Shape],
    pub(crate) sites: &'a [CallSite],
    pub(crate) spans: &'a [Span],
    pub(crate) n_slots: u16,
    /// Slots definitely assigned at each IR instruction.
    pub(crate) assigned: &'a dyn Fn(usize, u16) -> bool,
}

pub(crate) fn translate(input: &Input<'_>) -> Result<RegisterCode, String> {
    let n = input.n_slots as u32;
    let frame_size = n + input.heights.max + 2;
    if frame_size > Reg::MAX as u32 {
        return Err(format!(
            "function needs {frame_size} registers (at most {})",
            Reg::MAX
        ));
    }
    let t = |k: u32| -> Reg { (n + k) as Reg };

    // Which IR instructions are jump targets (block starts).
    let len = input.stack.len();
    let mut target = vec![false; len + 1];
    target[0] = true;
    for (ir, op) in input.stack.iter().enumerate() {
        if input.heights.at[ir].is_none() {
            continue; // unreachable code jumps nowhere
        }
        match *op {
            SOp::Jump(x) | SOp::JumpIfTrue(x) | SOp::JumpIfFalse(x) | SOp::Catch(x) => {
                target[x as usize] = true;
            }
            _ => {}
        }
    }
    for chain in input.chains {
        target[chain.end as usize] = true;
        for &(clause, _) in &chain.clauses {
            target[clause as usize] = true;
            target[(clause as usize + 1).min(len)] = true;
        }
    }

    let mut slots: Vec<Slot> = Vec::with_capacity(len);
    for (ir, &sop) in input.stack.iter().enumerate() {
        let Some(h) = input.heights.at[ir] else {
            // A chain's first CATCH is only entered through its handler (at the op after
            // it), so it is "unreachable" itself; it must still exist to anchor the clause.
            if let SOp::Catch(end) = sop {
                slots.push(Slot {
                    op: Some(Op::Catch { end }),
                    ir: ir as u32,
                    h_out: 0,
                    pinned: true,
                    boundary: false,
                });
            }
            continue;
        };
        let ir32 = ir as u32;
        let (needs, leaves) = crate::stack::stack_effect(sop, input.shapes, input.sites);
        let h_out = match sop {
            SOp::Return | SOp::Throw => 0,
            _ => h - needs + leaves,
        };
        let mut emit = |op: Option<Op>, pinned: bool| {
            slots.push(Slot {
                op,
                ir: ir32,
                h_out,
                pinned,
                boundary: false,
            });
        };
        let one = |op: Op| Some(op);
        match sop {
            SOp::LoadConst(k) => emit(one(Op::LoadConst { dst: t(h), k }), false),
            SOp::LoadLocal { slot, global } => {
                if (input.assigned)(ir, slot) {
                    emit(
                        one(Op::Move {
                            dst: t(h),
                            src: slot,
                        }),
                        false,
                    );
                } else {
                    emit(
                        one(Op::LoadLocal {
                            dst: t(h),
                            slot,
                            global,
                        }),
                        false,
                    );
                }
            }
            SOp::StoreLocal(slot) => emit(
                one(Op::Move {
                    dst: slot,
                    src: t(h - 1),
                }),
                false,
            ),
            SOp::LoadGlobal(global) => emit(one(Op::LoadGlobal { dst: t(h), global }), false),
            SOp::StoreGlobal(global) => emit(
                one(Op::StoreGlobal {
                    src: t(h - 1),
                    global,
                }),
                false,
            ),
            SOp::Pop => emit(None, false),
            SOp::Dup => emit(
                one(Op::Move {
                    dst: t(h),
                    src: t(h - 1),
                }),
                false,
            ),
            SOp::Swap => {
                emit(
                    one(Op::Move {
                        dst: t(h),
                        src: t(h - 1),
                    }),
                    true,
                );
                emit(
                    one(Op::Move {
                        dst: t(h - 1),
                        src: t(h - 2),
                    }),
                    true,
                );
                emit(
                    one(Op::Move {
                        dst: t(h - 2),
                        src: t(h),
                    }),
                    true,
                );
            }
            SOp::Bin(op) => emit(
                one(Op::Bin {
                    op,
                    dst: t(h - 2),
                    a: t(h - 2),
                    b: t(h - 1),
                }),
                false,
            ),
            SOp::Neg => emit(
                one(Op::Neg {
                    dst: t(h - 1),
                    src: t(h - 1),
                }),
                false,
            ),
            SOp::Not => emit(
                one(Op::Not {
                    dst: t(h - 1),
                    src: t(h - 1),
                }),
                false,
            ),
            SOp::And => emit(
                one(Op::And {
                    dst: t(h - 2),
                    a: t(h - 2),
                    b: t(h - 1),
                }),
                false,
            ),
            SOp::Or => emit(
                one(Op::Or {
                    dst: t(h - 2),
                    a: t(h - 2),
                    b: t(h - 1),
                }),
                false,
            ),
            SOp::Jump(x) => emit(one(Op::Jump { target: x }), false),
            SOp::JumpIfTrue(x) => emit(
                one(Op::JumpIf {
                    cond: t(h - 1),
                    when: true,
                    target: x,
                }),
                false,
            ),
            SOp::JumpIfFalse(x) => emit(
                one(Op::JumpIf {
                    cond: t(h - 1),
                    when: false,
                    target: x,
                }),
                false,
            ),
            SOp::Return if h > 0 => emit(one(Op::Return { src: t(h - 1) }), false),
            SOp::Return => emit(one(Op::ReturnNil), false),
            SOp::Call(argc) => emit(
                one(Op::Call {
                    base: t(h - 1 - argc),
                    argc: argc as u16,
                }),
                false,
            ),
            SOp::CallMethod { argc, name } => emit(
                one(Op::CallMethod {
                    base: t(h - 1 - argc as u32),
                    argc,
                    name,
                }),
                false,
            ),
            SOp::CallSite(site) => {
                let (needs, _) = call_site_effect(&input.sites[site as usize]);
                emit(
                    one(Op::CallSite {
                        base: t(h - needs),
                        site,
                    }),
                    false,
                )
            }
            SOp::Emit => emit(
                one(Op::Emit {
                    chan: t(h - 2),
                    payload: t(h - 1),
                }),
                false,
            ),
            SOp::EmitAwait => emit(
                one(Op::EmitAwait {
                    chan: t(h - 2),
                    payload: t(h - 1),
                }),
                false,
            ),
            SOp::TryBegin(chain) => emit(one(Op::TryBegin { chain, err: t(h) }), false),
            SOp::TryEnd => emit(one(Op::TryEnd), false),
            SOp::Catch(end) => emit(one(Op::Catch { end }), false),
            SOp::Throw => emit(one(Op::Throw { src: t(h - 1) }), false),
            SOp::Propagate => emit(one(Op::Propagate { reg: t(h - 1) }), false),
            SOp::BuildArray(count) => emit(
                one(Op::BuildArray {
                    start: t(h - count),
                    n: count,
                }),
                false,
            ),
            SOp::BuildMap(count) => emit(
                one(Op::BuildMap {
                    start: t(h - 2 * count),
                    n: count,
                }),
                false,
            ),
            SOp::BuildStruct(shape) => {
                let fields = input.shapes[shape as usize].fields.len() as u32;
                emit(
                    one(Op::BuildStruct {
                        start: t(h - fields),
                        shape,
                    }),
                    false,
                )
            }
            SOp::FieldGet(name) => emit(
                one(Op::FieldGet {
                    dst: t(h - 1),
                    obj: t(h - 1),
                    name,
                }),
                false,
            ),
            SOp::FieldSet(name) => emit(
                one(Op::FieldSet {
                    obj: t(h - 2),
                    src: t(h - 1),
                    name,
                }),
                false,
            ),
            SOp::IndexGet => emit(
                one(Op::IndexGet {
                    dst: t(h - 2),
                    coll: t(h - 2),
                    idx: t(h - 1),
                }),
                false,
            ),
            SOp::IndexSet => emit(
                one(Op::IndexSet {
                    coll: t(h - 3),
                    idx: t(h - 2),
                    src: t(h - 1),
                }),
                false,
            ),
            SOp::Cast(target) => emit(
                one(Op::Cast {
                    reg: t(h - 1),
                    target,
                }),
                false,
            ),
            SOp::CheckType(name) => emit(
                one(Op::CheckType {
                    reg: t(h - 1),
                    name,
                }),
                false,
            ),
            SOp::Await(timeout_ms) => emit(
                one(Op::Await {
                    reg: t(h - 1),
                    timeout_ms,
                }),
                false,
            ),
            SOp::AwaitAll(count, timeout_ms) | SOp::AwaitAny(count, timeout_ms) => emit(
                one(Op::AwaitAll {
                    start: t(h - count),
                    n: count,
                    timeout_ms,
                    any: matches!(sop, SOp::AwaitAny(..)),
                }),
                false,
            ),
            SOp::SpawnAsync => emit(one(Op::SpawnAsync { reg: t(h - 1) }), false),
        }
    }
    // Block starts: the first op of each target instruction (or the next op after it).
    {
        let mut seen_ir = usize::MAX;
        for s in slots.iter_mut() {
            let ir = s.ir as usize;
            if ir != seen_ir {
                seen_ir = ir;
                s.boundary = target[ir];
            }
        }
        // A target whose instruction was unreachable leaves no op; mark the next op.
        let mut last_ir = 0usize;
        for s in slots.iter_mut() {
            let ir = s.ir as usize;
            if (last_ir + 1..ir).any(|skipped| target[skipped]) {
                s.boundary = true;
            }
            last_ir = ir;
        }
    }

    let is_temp = |r: Reg| r as u32 >= n;
    for _ in 0..3 {
        let mut changed = false;
        changed |= propagate_sources(&mut slots, &is_temp, n);
        changed |= forward_destinations(&mut slots, n);
        changed |= drop_dead_defs(&mut slots, n);
        changed |= fuse_branches(&mut slots, n);
        if !changed {
            break;
        }
    }
    compact(&slots, input, len, frame_size)
}

/// Ends a straight-line stretch: later ops are not on every path from earlier ones.
fn is_control(op: &Op) -> bool {
    matches!(
        op,
        Op::Jump { .. }
            | Op::JumpIf { .. }
            | Op::CmpJump { .. }
            | Op::CmpJumpK { .. }
            | Op::Return { .. }
            | Op::ReturnNil
            | Op::Throw { .. }
            | Op::Catch { .. }
            | Op::TryBegin { .. }
            | Op::TryEnd
            | Op::Propagate { .. }
    )
}

/// Registers an op reads where another register may be substituted.
fn substitutable_reads(op: &Op) -> Vec<Reg> {
    match *op {
        Op::Move { src, .. } => vec![src],
        Op::StoreGlobal { src, .. } => vec![src],
        Op::Bin { a, b, .. } | Op::And { a, b, .. } | Op::Or { a, b, .. } => vec![a, b],
        Op::BinK { a, .. } => vec![a],
        Op::Neg { src, .. } | Op::Not { src, .. } => vec![src],
        Op::JumpIf { cond, .. } => vec![cond],
        Op::CmpJump { a, b, .. } => vec![a, b],
        Op::CmpJumpK { a, .. } => vec![a],
        Op::Return { src } => vec![src],
        Op::Emit { chan, payload } => vec![chan, payload],
        Op::Throw { src } => vec![src],
        Op::FieldGet { obj, .. } => vec![obj],
        Op::FieldSet { obj, src, .. } => vec![obj, src],
        Op::IndexGet { coll, idx, .. } => vec![coll, idx],
        Op::IndexSet { coll, idx, src } => vec![coll, idx, src],
        _ => Vec::new(),
    }
}

/// Every register an op reads, as `(first, count)` ranges (call windows included).
fn reads(op: &Op) -> Vec<(Reg, u32)> {
    let single = |r: Reg| vec![(r, 1u32)];
    match *op {
        Op::LoadConst { .. } | Op::LoadGlobal { .. } | Op::Jump { .. } | Op::ReturnNil => {
            Vec::new()
        }
        Op::LoadLocal { slot, .. } => single(slot),
        Op::Call { base, argc } => vec![(base, argc as u32 + 1)],
        Op::CallGlobal { base, argc, .. } => vec![(base, argc as u32)],
        Op::CallMethod { base, argc, .. } => vec![(base, argc as u32 + 1)],
        // Call-site operand counts vary; treat everything from `base` up as read.
        Op::CallSite { base, .. } => vec![(base, u32::MAX)],
        Op::EmitAwait { chan, payload } => vec![(chan, 1), (payload, 1)],
        Op::TryBegin { .. } | Op::TryEnd | Op::Catch { .. } => Vec::new(),
        Op::Propagate { reg } | Op::Cast { reg, .. } | Op::CheckType { reg, .. } => single(reg),
        Op::Await { reg, .. } | Op::SpawnAsync { reg } => single(reg),
        Op::BuildArray { start, n } | Op::AwaitAll { start, n, .. } => vec![(start, n)],
        Op::BuildMap { start, n } => vec![(start, n.saturating_mul(2))],
        Op::BuildStruct { start, .. } => vec![(start, u32::MAX)],
        ref other => substitutable_reads(other)
            .into_iter()
            .map(|r| (r, 1))
            .collect(),
    }
}

fn in_range(r: Reg, start: Reg, count: u32) -> bool {
    r >= start && (r as u64) < start as u64 + count as u64
}

fn reads_reg(op: &Op, r: Reg) -> bool {
    reads(op)
        .iter()
        .any(|&(start, count)| in_range(r, start, count))
}

/// The register an op writes as its single result, if any.
fn dst_of(op: &Op) -> Option<Reg> {
    match *op {
        Op::LoadConst { dst, .. }
        | Op::Move { dst, .. }
        | Op::LoadLocal { dst, .. }
        | Op::LoadGlobal { dst, .. }
        | Op::Bin { dst, .. }
        | Op::BinK { dst, .. }
        | Op::Neg { dst, .. }
        | Op::Not { dst, .. }
        | Op::And { dst, .. }
        | Op::Or { dst, .. }
        | Op::FieldGet { dst, .. }
        | Op::IndexGet { dst, .. } => Some(dst),
        _ => None,
    }
}

/// Whether an op writes register `r` (its result, or anywhere in a call's window: the
/// callee's frame starts there).
fn writes_reg(op: &Op, r: Reg) -> bool {
    match *op {
        Op::Call { base, .. }
        | Op::CallGlobal { base, .. }
        | Op::CallMethod { base, .. }
        | Op::CallSite { base, .. } => r >= base,
        Op::TryBegin { err, .. } => r == err,
        _ => op.result_reg() == Some(r),
    }
}

fn set_dst(op: &mut Op, new: Reg) {
    match op {
        Op::LoadConst { dst, .. }
        | Op::Move { dst, .. }
        | Op::LoadLocal { dst, .. }
        | Op::LoadGlobal { dst, .. }
        | Op::Bin { dst, .. }
        | Op::BinK { dst, .. }
        | Op::Neg { dst, .. }
        | Op::Not { dst, .. }
        | Op::And { dst, .. }
        | Op::Or { dst, .. }
        | Op::FieldGet { dst, .. }
        | Op::IndexGet { dst, .. } => *dst = new,
        _ => {}
    }
}

fn substitute(op: &mut Op, from: Reg, to: Reg) {
    let fix = |r: &mut Reg| {
        if *r == from {
            *r = to;
        }
    };
    match op {
        Op::Move { src, .. } => fix(src),
        Op::StoreGlobal { src, .. } => fix(src),
        Op::Bin { a, b, .. } | Op::And { a, b, .. } | Op::Or { a, b, .. } => {
            fix(a);
            fix(b);
        }
        Op::BinK { a, .. } => fix(a),
        Op::Neg { src, .. } | Op::Not { src, .. } => fix(src),
        Op::JumpIf { cond, .. } => fix(cond),
        Op::CmpJump { a, b, .. } => {
            fix(a);
            fix(b);
        }
        Op::CmpJumpK { a, .. } => fix(a),
        Op::Return { src } => fix(src),
        Op::Emit { chan, payload } => {
            fix(chan);
            fix(payload);
        }
        Op::Throw { src } => fix(src),
        Op::FieldGet { obj, .. } => fix(obj),
        Op::FieldSet { obj, src, .. } => {
            fix(obj);
            fix(src);
        }
        Op::IndexGet { coll, idx, .. } => {
            fix(coll);
            fix(idx);
        }
        Op::IndexSet { coll, idx, src } => {
            fix(coll);
            fix(idx);
            fix(src);
        }
        _ => {}
    }
}

/// Finds the next op after `d` that reads `r` within the same straight-line stretch, with no
/// write to any of `guards` (or to `r`) before it. Returns its index.
fn next_use(slots: &[Slot], d: usize, r: Reg, guards: &[Reg]) -> Option<usize> {
    let mut i = d + 1;
    while i < slots.len() {
        let s = &slots[i];
        if s.boundary || s.pinned {
            return None;
        }
        if let Some(op) = &s.op {
            if reads_reg(op, r) {
                return Some(i);
            }
            if writes_reg(op, r) || guards.iter().any(|&g| writes_reg(op, g)) || is_control(op) {
                return None;
            }
        }
        i += 1;
    }
    None
}

/// Whether temporary `r` (stack position `r - n`) holds no live value after op `u`: `u`
/// itself overwrites it, or the stack has shrunk to or below its position.
fn dead_after(slots: &[Slot], u: usize, r: Reg, n: u32) -> bool {
    let k = r as u32 - n;
    slots[u].h_out <= k || slots[u].op.is_some_and(|op| writes_reg(&op, r))
}

fn propagate_sources(slots: &mut [Slot], is_temp: &dyn Fn(Reg) -> bool, n: u32) -> bool {
    let mut changed = false;
    for d in 0..slots.len() {
        if slots[d].pinned {
            continue;
        }
        let Some(def) = slots[d].op else { continue };
        match def {
            // Only copies of locals: a temporary copied by `DUP` stays live after the copy is
            // used, and the interpreter may consume a temporary operand (move it out).
            Op::Move { dst, src } if is_temp(dst) && !is_temp(src) => {
                let Some(u) = next_use(slots, d, dst, &[src]) else {
                    continue;
                };
                let Some(mut use_op) = slots[u].op else {
                    continue;
                };
                if reads_in_ranges(&use_op, dst)
                    || !substitutable_reads(&use_op).contains(&dst)
                    || !dead_after(slots, u, dst, n)
                {
                    continue;
                }
                substitute(&mut use_op, dst, src);
                // A copy onto itself does nothing.
                slots[u].op = match use_op {
                    Op::Move { dst, src } if dst == src => None,
                    other => Some(other),
                };
                slots[d].op = None;
                changed = true;
            }
            Op::LoadConst { dst, k } if is_temp(dst) => {
                let Some(u) = next_use(slots, d, dst, &[]) else {
                    continue;
                };
                let Some(use_op) = slots[u].op else { continue };
                let replaced = match use_op {
                    Op::Bin { op, dst: out, a, b } if b == dst && a != dst => {
                        Some(Op::BinK { op, dst: out, a, k })
                    }
                    Op::CmpJump {
                        op,
                        when,
                        a,
                        b,
                        target,
                    } if b == dst && a != dst => Some(Op::CmpJumpK {
                        op,
                        when,
                        a,
                        target,
                        k,
                    }),
                    _ => None,
                };
                if let Some(new) = replaced
                    && dead_after(slots, u, dst, n)
                {
                    slots[u].op = Some(new);
                    slots[d].op = None;
                    changed = true;
                }
            }
            Op::LoadGlobal { dst, global } if is_temp(dst) => {
                let Some(u) = next_use(slots, d, dst, &[]) else {
                    continue;
                };
                if let Some(Op::Call { base, argc }) = slots[u].op
                    && base as u32 + argc as u32 == dst as u32
                {
                    slots[u].op = Some(Op::CallGlobal { base, argc, global });
                    slots[d].op = None;
                    changed = true;
                }
            }
            _ => {}
        }
    }
    changed
}

/// Whether `r` is read by the op as part of a register window (not individually).
fn reads_in_ranges(op: &Op, r: Reg) -> bool {
    reads(op).iter().any(|&(s, c)| c != 1 && in_range(r, s, c))
}

fn forward_destinations(slots: &mut [Slot], n: u32) -> bool {
    let mut changed = false;
    for d in 0..slots.len().saturating_sub(1) {
        if slots[d].pinned {
            continue;
        }
        let Some(def) = slots[d].op else { continue };
        let Some(t) = dst_of(&def) else { continue };
        if (t as u32) < n {
            continue;
        }
        // The next op that exists.
        let mut u = d + 1;
        while u < slots.len() && slots[u].op.is_none() && !slots[u].boundary && !slots[u].pinned {
            u += 1;
        }
        if u >= slots.len() || slots[u].boundary || slots[u].pinned {
            continue;
        }
        let Some(Op::Move { dst: y, src }) = slots[u].op else {
            continue;
        };
        if src != t || y == t || !dead_after(slots, u, t, n) {
            continue;
        }
        let mut new = def;
        set_dst(&mut new, y);
        slots[d].op = Some(new);
        slots[u].op = None;
        changed = true;
    }
    changed
}

fn drop_dead_defs(slots: &mut [Slot], n: u32) -> bool {
    let mut changed = false;
    for d in 0..slots.len() {
        if slots[d].pinned {
            continue;
        }
        let t = match slots[d].op {
            Some(Op::Move { dst, .. } | Op::LoadConst { dst, .. }) => dst,
            _ => continue,
        };
        if (t as u32) < n {
            continue;
        }
        let k = t as u32 - n;
        // Popped (or overwritten) before anything reads it, within the same stretch.
        let mut dead = false;
        for s in &slots[d + 1..] {
            if s.boundary || s.pinned {
                break;
            }
            if let Some(op) = &s.op {
                if reads_reg(op, t) || is_control(op) {
                    break;
                }
                if writes_reg(op, t) {
                    dead = true;
                    break;
                }
            }
            if s.h_out <= k {
                dead = true;
                break;
            }
        }
        if dead {
            slots[d].op = None;
            changed = true;
        }
    }
    changed
}

fn fuse_branches(slots: &mut [Slot], n: u32) -> bool {
    let mut changed = false;
    for d in 0..slots.len().saturating_sub(1) {
        if slots[d].pinned {
            continue;
        }
        let (op, dst, a, b, k) = match slots[d].op {
            Some(Op::Bin { op, dst, a, b }) if op.is_comparison() => (op, dst, a, Some(b), None),
            Some(Op::BinK { op, dst, a, k }) if op.is_comparison() => (op, dst, a, None, Some(k)),
            _ => continue,
        };
        if (dst as u32) < n {
            continue;
        }
        let mut u = d + 1;
        while u < slots.len() && slots[u].op.is_none() && !slots[u].boundary && !slots[u].pinned {
            u += 1;
        }
        if u >= slots.len() || slots[u].boundary || slots[u].pinned {
            continue;
        }
        let Some(Op::JumpIf { cond, when, target }) = slots[u].op else {
            continue;
        };
        if cond != dst || !dead_after(slots, u, dst, n) {
            continue;
        }
        slots[d].op = Some(match (b, k) {
            (Some(b), _) => Op::CmpJump {
                op,
                when,
                a,
                b,
                target,
            },
            (None, Some(k)) => Op::CmpJumpK {
                op,
                when,
                a,
                target,
                k,
            },
            _ => continue,
        });
        slots[u].op = None;
        changed = true;
    }
    changed
}

/// Drops the no-ops and renumbers targets, chains and spans.
fn compact(
    slots: &[Slot],
    input: &Input<'_>,
    ir_len: usize,
    frame_size: u32,
) -> Result<RegisterCode, String> {
    // first[ir] = index of the first kept op at or after IR instruction `ir`.
    let kept: Vec<&Slot> = slots.iter().filter(|s| s.op.is_some()).collect();
    let mut first = vec![kept.len() as u32; ir_len + 1];
    for (idx, s) in kept.iter().enumerate().rev() {
        first[s.ir as usize] = idx as u32;
    }
    for ir in (0..ir_len).rev() {
        first[ir] = first[ir].min(first[ir + 1]);
    }
    let map = |ir: u32| first[(ir as usize).min(ir_len)];
    let mut code = Vec::with_capacity(kept.len());
    let mut spans = Vec::with_capacity(kept.len());
    let mut ir_pc = Vec::with_capacity(kept.len());
    for s in &kept {
        let mut op = s.op.unwrap_or(Op::ReturnNil);
        match &mut op {
            Op::Jump { target }
            | Op::JumpIf { target, .. }
            | Op::CmpJump { target, .. }
            | Op::CmpJumpK { target, .. } => *target = map(*target),
            Op::Catch { end } => *end = map(*end),
            _ => {}
        }
        code.push(op);
        spans.push(input.spans.get(s.ir as usize).copied().unwrap_or_default());
        ir_pc.push(s.ir);
    }
    let chains = input
        .chains
        .iter()
        .map(|c| CatchChain {
            clauses: c
                .clauses
                .iter()
                .map(|&(pc, filter)| (map(pc), filter))
                .collect(),
            end: map(c.end),
        })
        .collect::<Vec<_>>();
    // Every clause must still start with its `Catch` op (the entry is the op after it).
    for chain in &chains {
        for &(pc, _) in &chain.clauses {
            if !matches!(code.get(pc as usize), Some(Op::Catch { .. })) {
                return Err("internal: a catch clause lost its CATCH op".into());
            }
        }
    }
    Ok(RegisterCode {
        code,
        spans,
        ir_pc,
        chains,
        frame_size,
    })
}

/// A set of local slots.
#[derive(Clone, PartialEq, Eq)]
struct SlotSet(Vec<u64>);

impl SlotSet {
    fn empty(n: u16) -> SlotSet {
        SlotSet(vec![0; (n as usize).div_ceil(64)])
    }
    fn contains(&self, slot: u16) -> bool {
        self.0
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }
    fn insert(&mut self, slot: u16) {
        if let Some(w) = self.0.get_mut(slot as usize / 64) {
            *w |= 1 << (slot % 64);
        }
    }
    /// Intersects in place; whether anything changed.
    fn intersect(&mut self, other: &SlotSet) -> bool {
        let mut changed = false;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            let next = *a & b;
            changed |= next != *a;
            *a = next;
        }
        changed
    }
}

/// For each IR instruction, the slots that hold a value on every path reaching it
/// (`entry` slots from the start, stored names from their `STORE_LOCAL`).
pub(crate) struct Assigned(Vec<Option<SlotSet>>);

impl Assigned {
    pub(crate) fn contains(&self, pc: usize, slot: u16) -> bool {
        self.0
            .get(pc)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.contains(slot))
    }
}

pub(crate) fn definitely_assigned(
    code: &[SOp],
    chains: &[CatchChain],
    entry_slots: std::ops::Range<u16>,
    n_slots: u16,
) -> Assigned {
    let len = code.len();
    let mut state: Vec<Option<SlotSet>> = vec![None; len];
    if len == 0 {
        return Assigned(state);
    }
    let mut entry = SlotSet::empty(n_slots);
    for p in entry_slots {
        entry.insert(p);
    }
    let mut work = vec![0usize];
    state[0] = Some(entry);
    let push = |state: &mut Vec<Option<SlotSet>>, work: &mut Vec<usize>, to: usize, s: &SlotSet| {
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
        let Some(mut s) = state[pc].clone() else {
            continue;
        };
        let op = code[pc];
        if let SOp::StoreLocal(slot) = op {
            s.insert(slot);
        }
        match op {
            SOp::Jump(t) | SOp::Catch(t) => push(&mut state, &mut work, t as usize, &s),
            SOp::JumpIfTrue(t) | SOp::JumpIfFalse(t) => {
                push(&mut state, &mut work, t as usize, &s);
                push(&mut state, &mut work, pc + 1, &s);
            }
            SOp::Return | SOp::Throw => {}
            SOp::TryBegin(chain) => {
                // The slots assigned when the try begins are assigned wherever its handler
                // can be entered from (assignments only accumulate along a path).
                for &(clause, _) in &chains[chain as usize].clauses {
                    push(&mut state, &mut work, clause as usize + 1, &s);
                }
                push(&mut state, &mut work, pc + 1, &s);
            }
            _ => push(&mut state, &mut work, pc + 1, &s),
        }
    }
    Assigned(state)
}
