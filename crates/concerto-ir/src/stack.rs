//! The stack form: one op per IR instruction with resolved operands, the input of the
//! verifier and of the register translation ([`crate::registers`]).

use crate::program::{BinOp, CallSite, CastTarget, HashmapOp, NameId, Shape};

/// A stack op: an IR instruction with resolved operands. Stack effects are those of the IR
/// opcode of the same name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SOp {
    LoadConst(u32),
    LoadLocal {
        slot: u16,
        global: u32,
    },
    StoreLocal(u16),
    LoadGlobal(u32),
    StoreGlobal(u32),
    Pop,
    Dup,
    Swap,
    Bin(BinOp),
    Neg,
    And,
    Or,
    Not,
    Jump(u32),
    JumpIfTrue(u32),
    JumpIfFalse(u32),
    Return,
    Call(u32),
    CallMethod {
        argc: u16,
        name: NameId,
    },
    CallSite(u32),
    Emit,
    EmitAwait,
    /// Before chain resolution: the `CATCH` target; after: the chain index.
    TryBegin(u32),
    TryEnd,
    /// The end of the chain the `CATCH` belongs to (set by chain resolution).
    Catch(u32),
    Throw,
    Propagate,
    BuildArray(u32),
    BuildMap(u32),
    BuildStruct(u32),
    FieldGet(NameId),
    FieldSet(NameId),
    IndexGet,
    IndexSet,
    Cast(CastTarget),
    CheckType(NameId),
    /// Timeout in milliseconds (0: none).
    Await(u32),
    /// Count, timeout in milliseconds (0: none).
    AwaitAll(u32, u32),
    /// Count, timeout in milliseconds (0: none).
    AwaitAny(u32, u32),
    SpawnAsync,
}

/// Stack effect of an op: (values it needs, values it leaves in their place).
pub(crate) fn stack_effect(op: SOp, shapes: &[Shape], sites: &[CallSite]) -> (u32, u32) {
    match op {
        SOp::LoadConst(_) | SOp::LoadLocal { .. } | SOp::LoadGlobal(_) => (0, 1),
        SOp::StoreLocal(_) | SOp::StoreGlobal(_) | SOp::Pop => (1, 0),
        SOp::Dup => (1, 2),
        SOp::Swap => (2, 2),
        SOp::Bin(_) | SOp::And | SOp::Or => (2, 1),
        SOp::Neg
        | SOp::Not
        | SOp::Cast(_)
        | SOp::CheckType(_)
        | SOp::FieldGet(_)
        | SOp::Await(_) => (1, 1),
        SOp::Jump(_) | SOp::TryBegin(_) | SOp::TryEnd | SOp::Catch(_) => (0, 0),
        SOp::JumpIfTrue(_) | SOp::JumpIfFalse(_) => (1, 0),
        SOp::Return => (0, 0),
        SOp::Call(argc) => (argc.saturating_add(1), 1),
        SOp::CallMethod { argc, .. } => (argc as u32 + 1, 1),
        SOp::CallSite(idx) => call_site_effect(&sites[idx as usize]),
        SOp::Emit => (2, 0),
        SOp::EmitAwait => (2, 1),
        SOp::Throw => (1, 0),
        SOp::Propagate => (1, 1),
        SOp::BuildArray(n) => (n, 1),
        SOp::BuildMap(n) => (n.saturating_mul(2), 1),
        SOp::BuildStruct(shape) => (shapes[shape as usize].fields.len() as u32, 1),
        SOp::FieldSet(_) => (2, 0),
        SOp::IndexGet => (2, 1),
        SOp::IndexSet => (3, 0),
        SOp::AwaitAll(n, _) | SOp::AwaitAny(n, _) => (n, 1),
        SOp::SpawnAsync => (1, 1),
    }
}

/// Operands a call site takes from the stack, and results it leaves.
pub(crate) fn call_site_effect(site: &CallSite) -> (u32, u32) {
    match site {
        CallSite::MethodWithSchema { argc, .. } => (*argc as u32 + 1, 1),
        CallSite::Native { argc, .. } => (*argc as u32, 1),
        CallSite::Agent { argc, .. } => (*argc as u32, 1),
        CallSite::Tool { argc, .. } => (*argc as u32, 1),
        CallSite::Hashmap { op, .. } => match op {
            HashmapOp::Set => (2, 1),
            _ => (1, 1),
        },
        CallSite::NilCoalescePrep => (1, 1),
        CallSite::BuildRange => (3, 1),
        CallSite::Listen { argc, .. } => (*argc as u32, 1),
        CallSite::MockModel { .. } => (0, 0),
    }
}

/// Operand-stack height on entry to each instruction (`None`: unreachable), and the
/// deepest height reached.
pub(crate) struct Heights {
    pub(crate) at: Vec<Option<u32>>,
    pub(crate) max: u32,
}

/// Upper bound on the operand stack a single function may need.
const MAX_STACK: u32 = 1 << 14;

/// Verifies that every reachable instruction is reached with one operand-stack height and
/// never pops below the frame.
pub(crate) fn verify(
    code: &[SOp],
    chains: &[crate::program::CatchChain],
    shapes: &[Shape],
    sites: &[CallSite],
) -> Result<Heights, (usize, String)> {
    let len = code.len();
    let mut heights: Vec<Option<u32>> = vec![None; len + 1];
    let mut work: Vec<usize> = Vec::new();
    let mut max = 0u32;
    let reach = |heights: &mut Vec<Option<u32>>,
                 work: &mut Vec<usize>,
                 from: usize,
                 to: usize,
                 h: u32|
     -> Result<(), (usize, String)> {
        match heights[to] {
            None => {
                heights[to] = Some(h);
                if to < len {
                    work.push(to);
                }
                Ok(())
            }
            Some(existing) if existing == h => Ok(()),
            Some(existing) => Err((
                from,
                format!(
                    "stack height mismatch: instruction {to} is reached with {existing} and {h} values"
                ),
            )),
        }
    };
    if len > 0 {
        heights[0] = Some(0);
        work.push(0);
    }
    while let Some(pc) = work.pop() {
        let h = heights[pc].unwrap_or(0);
        let op = code[pc];
        let (needs, leaves) = stack_effect(op, shapes, sites);
        if h < needs {
            return Err((
                pc,
                format!("stack underflow: needs {needs} values, has {h}"),
            ));
        }
        let after = h - needs + leaves;
        if after > MAX_STACK {
            return Err((pc, "operand stack too deep".into()));
        }
        max = max.max(after).max(h);
        match op {
            SOp::Jump(t) => reach(&mut heights, &mut work, pc, t as usize, after)?,
            SOp::Catch(end) => reach(&mut heights, &mut work, pc, end as usize, after)?,
            SOp::JumpIfTrue(t) | SOp::JumpIfFalse(t) => {
                reach(&mut heights, &mut work, pc, t as usize, after)?;
                reach(&mut heights, &mut work, pc, pc + 1, after)?;
            }
            SOp::Return | SOp::Throw => {}
            SOp::TryBegin(chain) => {
                for &(clause, _) in &chains[chain as usize].clauses {
                    let entry = clause as usize + 1;
                    if entry > len {
                        return Err((pc, "catch clause has no body".into()));
                    }
                    reach(&mut heights, &mut work, pc, entry, h + 1)?;
                }
                reach(&mut heights, &mut work, pc, pc + 1, after)?;
            }
            _ => reach(&mut heights, &mut work, pc, pc + 1, after)?,
        }
    }
    heights.truncate(len);
    Ok(Heights { at: heights, max })
}
