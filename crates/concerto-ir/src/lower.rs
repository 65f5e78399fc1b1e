//! Validation and lowering: [`IrModule`] → [`Program`].
//!
//! One pass per function turns instruction objects into [`Op`]s with resolved operands,
//! then a second pass computes handler chains and a third verifies the stack discipline
//! (every path reaches each instruction with the same operand-stack height, and no
//! instruction pops below its frame). After this, the interpreter needs no checks of its own
//! for malformed code.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::error::LoadError;
use crate::loader::check_version;
use crate::model::{self, Instruction, IrModule};
use crate::opcode::Opcode;
use crate::program::*;
use crate::stack::SOp;

/// Struct types the runtime itself constructs and programs may name in a literal.
pub const BUILTIN_STRUCTS: &[&str] = &[
    "ToolError",
    "AgentError",
    "SchemaError",
    "TimeoutError",
    "PipelineError",
    "RuntimeError",
    "EmitError",
    "Response",
    "Message",
    "LedgerEntry",
];

/// Validates and lowers a parsed module.
///
/// # Errors
/// [`LoadError::VersionMismatch`] or [`LoadError::Invalid`].
pub fn lower(mut module: IrModule) -> Result<Program, LoadError> {
    let mut warnings = Vec::new();
    if let Some(warning) = check_version(&module.version)? {
        warnings.push(warning);
    }
    let mut cx = Lowerer::default();
    cx.constants(&module.constants)?;
    cx.types(&module.types)?;

    // All code bodies, in a fixed order: functions, tool methods, pipeline stages.
    let mut bodies: Vec<(Arc<str>, FunctionKind, model::Function)> = Vec::new();
    for func in std::mem::take(&mut module.functions) {
        let kind = if func.name.starts_with("$closure_") {
            FunctionKind::Closure
        } else if func.name.starts_with("$const_") {
            FunctionKind::ConstInit
        } else {
            FunctionKind::Plain
        };
        bodies.push((Arc::from(func.name.as_str()), kind, func));
    }
    let mut tool_methods: Vec<Vec<(Arc<str>, FuncId)>> = Vec::new();
    // Tools, host agents and MCP servers share one namespace: permissions are granted by
    // name, so a name must denote exactly one of them.
    {
        let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
        let named = module
            .tools
            .iter()
            .map(|t| (t.name.as_str(), "tool"))
            .chain(module.hosts.iter().map(|h| (h.name.as_str(), "host")))
            .chain(
                module
                    .connections
                    .iter()
                    .filter(|c| c.is_mcp())
                    .map(|c| (c.name.as_str(), "MCP server")),
            );
        for (name, what) in named {
            if let Some(first) = seen.insert(name, what) {
                return Err(LoadError::invalid(
                    format!("{what} {name}"),
                    None,
                    format!("the name `{name}` is also declared as a {first}"),
                ));
            }
        }
    }
    for conn in module.connections.iter().filter(|c| c.is_mcp()) {
        check_mcp_transport(conn)?;
    }
    for (tool_idx, tool) in module.tools.iter_mut().enumerate() {
        check_tool_signatures(tool)?;
        let mut methods = Vec::new();
        for method in std::mem::take(&mut tool.methods) {
            let full: Arc<str> = Arc::from(format!("{}::{}", tool.name, method.name));
            methods.push((
                Arc::from(method.name.as_str()),
                FuncId::new(bodies.len() as u32),
            ));
            let mut method = method;
            method.name = full.to_string();
            bodies.push((full, FunctionKind::ToolMethod(tool_idx as u32), method));
        }
        tool_methods.push(methods);
    }
    let mut pipelines = Vec::new();
    for (p_idx, pipeline) in module.pipelines.iter_mut().enumerate() {
        let mut stages = Vec::new();
        for (s_idx, stage) in pipeline.stages.iter_mut().enumerate() {
            let full: Arc<str> = Arc::from(format!("{}::{}", pipeline.name, stage.name));
            stages.push(StageDef {
                name: Arc::from(stage.name.as_str()),
                function: FuncId::new(bodies.len() as u32),
                decorators: std::mem::take(&mut stage.decorators),
            });
            let func = model::Function {
                name: full.to_string(),
                module: module.module.clone(),
                visibility: "private".into(),
                params: std::mem::take(&mut stage.params),
                return_type: stage.output_type.clone(),
                is_async: false,
                locals: Vec::new(),
                instructions: std::mem::take(&mut stage.instructions),
            };
            bodies.push((full, FunctionKind::Stage(p_idx as u32, s_idx as u32), func));
        }
        pipelines.push(PipelineDef {
            name: Arc::from(pipeline.name.as_str()),
            stages,
            input_type: declared_type(pipeline.input_type.as_deref()),
            output_type: declared_type(pipeline.output_type.as_deref()),
        });
    }
    // Listen handlers: one function of one parameter (the message) each.
    // Per listen block: (message type, body, the schema its parameter names).
    type Handlers = Vec<(Arc<str>, FuncId, Option<String>)>;
    let mut listen_handlers: Vec<Handlers> = Vec::new();
    for listen in module.listens.iter_mut() {
        let mut handlers = Vec::new();
        for handler in std::mem::take(&mut listen.handlers) {
            let full: Arc<str> = Arc::from(format!("{}::{}", listen.name, handler.message_type));
            let schema = annotated_name(&handler.param.ty);
            handlers.push((
                Arc::from(handler.message_type.as_str()),
                FuncId::new(bodies.len() as u32),
                schema,
            ));
            let func = model::Function {
                name: full.to_string(),
                module: module.module.clone(),
                visibility: "private".into(),
                params: vec![model::Param {
                    name: handler.param.name,
                    ty: "any".into(),
                }],
                return_type: "any".into(),
                is_async: false,
                locals: Vec::new(),
                instructions: handler.instructions,
            };
            let l_idx = listen_handlers.len() as u32;
            let h_idx = handlers.len() as u32 - 1;
            bodies.push((full, FunctionKind::ListenHandler(l_idx, h_idx), func));
        }
        listen_handlers.push(handlers);
    }
    // Tests: functions without parameters, never reachable by name from the program.
    let mut tests = Vec::new();
    for (t_idx, test) in std::mem::take(&mut module.tests).into_iter().enumerate() {
        let full: Arc<str> = Arc::from(format!("$test_{t_idx}"));
        tests.push(TestDef {
            description: Arc::from(test.description.as_str()),
            function: FuncId::new(bodies.len() as u32),
            expect_fail: test.expect_fail,
            expect_fail_message: test.expect_fail_message,
        });
        let func = model::Function {
            name: full.to_string(),
            module: module.module.clone(),
            visibility: "private".into(),
            params: Vec::new(),
            return_type: "nil".into(),
            is_async: false,
            locals: Vec::new(),
            instructions: test.instructions,
        };
        bodies.push((full, FunctionKind::Test(t_idx as u32), func));
    }
    for (idx, (name, _, _)) in bodies.iter().enumerate() {
        if cx
            .function_index
            .insert(name.clone(), FuncId::new(idx as u32))
            .is_some()
        {
            return Err(LoadError::invalid(
                name.to_string(),
                None,
                "duplicate function name",
            ));
        }
    }

    cx.declare_globals(&module, &bodies)?;

    let mut functions = Vec::with_capacity(bodies.len());
    for (name, kind, func) in bodies {
        functions.push(cx.function(name, kind, func, &module)?);
    }

    let mut agents = Vec::with_capacity(module.agents.len());
    for agent in std::mem::take(&mut module.agents) {
        let connection = if agent.connection.is_empty() {
            None
        } else {
            let idx = module
                .connections
                .iter()
                .position(|c| c.name == agent.connection);
            match idx {
                Some(idx) => Some(idx as u32),
                None => {
                    return Err(LoadError::invalid(
                        format!("agent {}", agent.name),
                        None,
                        format!("unknown connection `{}`", agent.connection),
                    ));
                }
            }
        };
        for tool in &agent.tools {
            let known = module.tools.iter().any(|t| &t.name == tool)
                || module
                    .connections
                    .iter()
                    .any(|c| &c.name == tool && c.is_mcp());
            if !known {
                return Err(LoadError::invalid(
                    format!("agent {}", agent.name),
                    None,
                    format!("unknown tool or MCP server `{tool}`"),
                ));
            }
        }
        agents.push(AgentDef {
            decl: agent,
            connection,
        });
    }

    let tools = std::mem::take(&mut module.tools)
        .into_iter()
        .zip(tool_methods)
        .map(|(decl, methods)| ToolDef { decl, methods })
        .collect();

    let mut listens = Vec::with_capacity(module.listens.len());
    for (listen, handlers) in module.listens.iter().zip(listen_handlers) {
        let host = module
            .hosts
            .iter()
            .position(|h| h.name == listen.agent)
            .ok_or_else(|| {
                LoadError::invalid(
                    format!("listen {}", listen.name),
                    None,
                    format!("unknown external agent `{}`", listen.agent),
                )
            })?;
        listens.push(ListenDef {
            name: Arc::from(listen.name.as_str()),
            host: host as u32,
            handlers: handlers
                .into_iter()
                .map(|(message_type, function, schema)| ListenHandlerDef {
                    message_type,
                    function,
                    schema: schema.and_then(|s| cx.schema_index.get(&s).copied()),
                })
                .collect(),
        });
    }
    // LISTEN_BEGIN sites name their block; check the names now that all blocks are known.
    for site in &cx.call_sites {
        if let CallSite::Listen { listen, .. } = site
            && *listen as usize >= listens.len()
        {
            return Err(LoadError::invalid(
                "listens",
                None,
                "LISTEN_BEGIN names a listen block that does not exist",
            ));
        }
    }

    let entry = match cx.function_index.get(module.metadata.entry_point.as_str()) {
        Some(&id) => Some(id),
        None if !tests.is_empty() => None,
        None => {
            return Err(LoadError::invalid(
                "metadata",
                None,
                format!(
                    "entry point `{}` is not a function",
                    module.metadata.entry_point
                ),
            ));
        }
    };
    let const_inits = functions
        .iter()
        .enumerate()
        .filter(|(_, f): &(usize, &Function)| f.kind == FunctionKind::ConstInit)
        .map(|(idx, _)| FuncId::new(idx as u32))
        .collect();

    Ok(Program {
        version: module.version,
        module: module.module,
        source_file: module.source_file,
        metadata: module.metadata,
        warnings,
        constants: cx.constants,
        names: cx.names,
        functions,
        globals: cx.globals,
        shapes: cx.shapes,
        call_sites: cx.call_sites,
        types: cx.types,
        agents,
        tools,
        schemas: module.schemas,
        connections: module.connections,
        hashmaps: module.hashmaps,
        ledgers: module.ledgers,
        memories: module.memories,
        hosts: module.hosts,
        pipelines,
        listens,
        tests,
        mocks: cx.mocks,
        dialect: module.dialect,
        entry,
        const_inits,
        function_index: cx.function_index,
        global_index: cx.global_index,
        type_index: cx.type_index,
        name_index: cx.name_index,
    })
}

#[derive(Default)]
struct Lowerer {
    constants: Vec<Const>,
    names: Vec<Arc<str>>,
    name_index: FxHashMap<Arc<str>, NameId>,
    globals: Vec<Global>,
    global_index: FxHashMap<Arc<str>, u32>,
    shapes: Vec<Shape>,
    call_sites: Vec<CallSite>,
    types: Vec<TypeDef>,
    type_index: FxHashMap<Arc<str>, u32>,
    function_index: FxHashMap<Arc<str>, FuncId>,
    /// Schema name → index.
    schema_index: FxHashMap<String, u32>,
    agent_index: FxHashMap<String, u32>,
    /// Listen block name → index (the order of the `listens` section).
    listen_index: FxHashMap<String, u32>,
    mocks: Vec<MockDef>,
    hashmap_index: FxHashMap<String, u32>,
    tool_index: FxHashMap<String, u32>,
}

impl Lowerer {
    fn intern(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.name_index.get(name) {
            return id;
        }
        let id = NameId::new(self.names.len() as u32);
        let arc: Arc<str> = Arc::from(name);
        self.names.push(arc.clone());
        self.name_index.insert(arc, id);
        id
    }

    fn constants(&mut self, constants: &[model::Constant]) -> Result<(), LoadError> {
        self.constants.reserve(constants.len());
        for (pos, c) in constants.iter().enumerate() {
            let fail = |reason: String| LoadError::invalid("constants", Some(pos), reason);
            if c.index != pos {
                return Err(fail(format!(
                    "constant at position {pos} has index {}",
                    c.index
                )));
            }
            let value = match (c.ty.as_str(), &c.value) {
                ("int", serde_json::Value::Number(n)) if n.is_i64() => {
                    Const::Int(n.as_i64().unwrap_or_default())
                }
                ("float", serde_json::Value::Number(n)) if n.is_f64() => {
                    Const::Float(n.as_f64().unwrap_or_default())
                }
                ("string", serde_json::Value::String(s)) => Const::Str(Arc::from(s.as_str())),
                ("bool", serde_json::Value::Bool(b)) => Const::Bool(*b),
                ("nil", serde_json::Value::Null) => Const::Nil,
                ("int" | "float" | "string" | "bool" | "nil", other) => {
                    return Err(fail(format!(
                        "constant of type `{}` has a value of the wrong kind: {other}",
                        c.ty
                    )));
                }
                (other, _) => return Err(fail(format!("unknown constant type `{other}`"))),
            };
            self.constants.push(value);
        }
        Ok(())
    }

    fn types(&mut self, types: &[model::TypeDecl]) -> Result<(), LoadError> {
        for decl in types {
            let kind = match decl.kind.as_str() {
                "struct" => TypeDefKind::Struct {
                    fields: decl.fields.iter().map(|f| self.intern(&f.name)).collect(),
                },
                "enum" => TypeDefKind::Enum {
                    variants: decl
                        .variants
                        .iter()
                        .map(|v| VariantDef {
                            name: Arc::from(v.name.as_str()),
                            fields: v
                                .data
                                .as_ref()
                                .map(|data| data.iter().map(|f| self.intern(&f.name)).collect()),
                        })
                        .collect(),
                },
                other => {
                    return Err(LoadError::invalid(
                        format!("type {}", decl.name),
                        None,
                        format!("unknown type kind `{other}`"),
                    ));
                }
            };
            let name: Arc<str> = Arc::from(decl.name.as_str());
            let id = self.types.len() as u32;
            if self.type_index.insert(name.clone(), id).is_some() {
                return Err(LoadError::invalid(
                    format!("type {}", decl.name),
                    None,
                    "duplicate type name",
                ));
            }
            self.types.push(TypeDef { name, kind });
        }
        Ok(())
    }

    fn add_global(&mut self, name: &str, kind: GlobalKind) -> u32 {
        if let Some(&id) = self.global_index.get(name) {
            return id;
        }
        let id = self.globals.len() as u32;
        let arc: Arc<str> = Arc::from(name);
        self.globals.push(Global {
            name: arc.clone(),
            kind,
        });
        self.global_index.insert(arc, id);
        id
    }

    /// The global for a name that is not a local: declared, constant or external.
    fn global_for(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.global_index.get(name) {
            return id;
        }
        let function = self.function_index.get(name).copied();
        self.add_global(name, GlobalKind::External { function })
    }

    fn declare_globals(
        &mut self,
        module: &IrModule,
        bodies: &[(Arc<str>, FunctionKind, model::Function)],
    ) -> Result<(), LoadError> {
        for (idx, agent) in module.agents.iter().enumerate() {
            self.agent_index
                .entry(agent.name.clone())
                .or_insert(idx as u32);
            self.add_global(&agent.name, GlobalKind::Agent(idx as u32));
        }
        for (idx, schema) in module.schemas.iter().enumerate() {
            self.schema_index
                .entry(schema.name.clone())
                .or_insert(idx as u32);
            self.add_global(&schema.name, GlobalKind::Schema(idx as u32));
        }
        for (idx, tool) in module.tools.iter().enumerate() {
            self.tool_index
                .entry(tool.name.clone())
                .or_insert(idx as u32);
            self.add_global(&tool.name, GlobalKind::Tool(idx as u32));
        }
        for (idx, conn) in module.connections.iter().enumerate() {
            if conn.is_mcp() {
                self.add_global(&conn.name, GlobalKind::Mcp(idx as u32));
            }
        }
        for (idx, map) in module.hashmaps.iter().enumerate() {
            self.hashmap_index
                .entry(map.name.clone())
                .or_insert(idx as u32);
            self.add_global(&map.name, GlobalKind::Hashmap(idx as u32));
        }
        for (idx, ledger) in module.ledgers.iter().enumerate() {
            self.add_global(&ledger.name, GlobalKind::Ledger(idx as u32));
        }
        for (idx, memory) in module.memories.iter().enumerate() {
            self.add_global(&memory.name, GlobalKind::Memory(idx as u32));
        }
        for (idx, pipeline) in module.pipelines.iter().enumerate() {
            self.add_global(&pipeline.name, GlobalKind::Pipeline(idx as u32));
        }
        for (idx, host) in module.hosts.iter().enumerate() {
            self.add_global(&host.name, GlobalKind::Host(idx as u32));
        }
        for (idx, listen) in module.listens.iter().enumerate() {
            self.listen_index.insert(listen.name.clone(), idx as u32);
        }
        for (_, _, func) in bodies {
            for ins in &func.instructions {
                if ins.op == Opcode::StoreGlobal
                    && let Some(name) = &ins.name
                {
                    let fallback = self.function_index.get(name.as_str()).copied();
                    self.add_global(name, GlobalKind::Constant { fallback });
                }
            }
        }
        for (ty_idx, ty) in module.types.iter().enumerate() {
            for (v_idx, variant) in ty.variants.iter().enumerate() {
                let path = format!("{}::{}", ty.name, variant.name);
                self.add_global(
                    &path,
                    GlobalKind::EnumVariant {
                        ty: ty_idx as u32,
                        variant: v_idx as u32,
                    },
                );
            }
        }
        Ok(())
    }

    fn function(
        &mut self,
        name: Arc<str>,
        kind: FunctionKind,
        func: model::Function,
        module: &IrModule,
    ) -> Result<Function, LoadError> {
        let fname = name.to_string();
        let fail =
            |pc: Option<usize>, reason: String| LoadError::invalid(fname.clone(), pc, reason);
        let n_params = func.params.len();

        // Slots: `self` first when the body mentions it (so a method call's receiver is
        // already in place below its arguments), then the parameters, then every stored name.
        let mut slot_names: Vec<Arc<str>> = Vec::new();
        let mut slot_of: FxHashMap<&str, u16> = FxHashMap::default();
        let mentions_self = func.instructions.iter().any(|ins| {
            matches!(ins.op, Opcode::LoadLocal | Opcode::StoreLocal)
                && ins.name.as_deref() == Some("self")
        }) && !func.params.iter().any(|p| p.name == "self");
        let mut self_slot = None;
        if mentions_self {
            self_slot = Some(0);
            slot_names.push(Arc::from("self"));
        }
        for param in &func.params {
            slot_of.insert(param.name.as_str(), slot_names.len() as u16);
            slot_names.push(Arc::from(param.name.as_str()));
        }
        if mentions_self {
            slot_of.insert("self", 0);
        }
        for ins in &func.instructions {
            if ins.op == Opcode::StoreLocal
                && let Some(local) = ins.name.as_deref()
                && !slot_of.contains_key(local)
            {
                if slot_names.len() >= u16::MAX as usize {
                    return Err(fail(None, "too many local variables".into()));
                }
                slot_of.insert(local, slot_names.len() as u16);
                slot_names.push(Arc::from(local));
            }
        }
        if slot_names.len() >= u16::MAX as usize {
            return Err(fail(None, "too many parameters".into()));
        }

        let len = func.instructions.len();
        let mut code = Vec::with_capacity(len);
        let mut spans = Vec::with_capacity(len);
        for (pc, ins) in func.instructions.iter().enumerate() {
            let op = self
                .instruction(ins, len, &slot_of, module)
                .map_err(|reason| fail(Some(pc), reason))?;
            code.push(op);
            spans.push(match ins.span {
                Some((line, column)) => Span { line, column },
                None => Span::default(),
            });
        }

        let chains = build_chains(&func.instructions, &mut code, self)
            .map_err(|(pc, r)| fail(Some(pc), r))?;
        let heights = crate::stack::verify(&code, &chains, &self.shapes, &self.call_sites)
            .map_err(|(pc, r)| fail(Some(pc), r))?;

        // `self` (slot 0, when present) is set by every method call; the interpreter refuses
        // to call such a function without a receiver, so it counts as assigned on entry.
        let n_slots = slot_names.len() as u16;
        let entry = 0..u16::from(self_slot.is_some()) + n_params as u16;
        let assigned = crate::registers::definitely_assigned(&code, &chains, entry, n_slots);
        let is_assigned = |pc: usize, slot: u16| assigned.contains(pc, slot);
        let registers = crate::registers::translate(&crate::registers::Input {
            stack: &code,
            chains: &chains,
            heights: &heights,
            shapes: &self.shapes,
            sites: &self.call_sites,
            spans: &spans,
            n_slots,
            assigned: &is_assigned,
        })
        .map_err(|r| fail(None, r))?;
        let mut code = registers.code;
        let mut spans = registers.spans;
        let mut ir_pc = registers.ir_pc;
        self.immediates(&mut code);
        rotate_loops(&mut code, &mut spans, &mut ir_pc);
        if registers.chains.is_empty() {
            crate::liveness::take_dead_moves(
                &mut code,
                n_slots,
                registers.frame_size,
                &self.call_sites,
                &self.shapes,
            );
        }
        Ok(Function {
            name,
            kind,
            return_type: func.return_type,
            is_async: func.is_async,
            n_params: n_params as u16,
            n_slots,
            self_slot,
            slot_names,
            params: func.params,
            frame_size: registers.frame_size,
            code,
            spans,
            ir_pc,
            chains: registers.chains,
        })
    }

    /// Carries small integer constants in the op itself ([`Op::BinI`], [`Op::CmpJumpI`]):
    /// no constant-table load and no type test of the constant at run time.
    fn immediates(&self, code: &mut [Op]) {
        let small = |k: u32| match self.constants.get(k as usize) {
            Some(&Const::Int(v)) => i32::try_from(v).ok(),
            _ => None,
        };
        for op in code {
            match *op {
                Op::BinK { op: bin, dst, a, k } => {
                    if let Some(imm) = small(k) {
                        *op = Op::BinI {
                            op: bin,
                            dst,
                            a,
                            imm,
                        };
                    }
                }
                Op::CmpJumpK {
                    op: bin,
                    when,
                    a,
                    target,
                    k,
                } => {
                    if let Some(imm) = small(k) {
                        *op = Op::CmpJumpI {
                            op: bin,
                            when,
                            a,
                            target,
                            imm,
                        };
                    }
                }
                _ => {}
            }
        }
    }

    fn instruction(
        &mut self,
        ins: &Instruction,
        len: usize,
        slot_of: &FxHashMap<&str, u16>,
        module: &IrModule,
    ) -> Result<SOp, String> {
        let name = || -> Result<&str, String> {
            ins.name
                .as_deref()
                .ok_or_else(|| format!("{} is missing its `name`", ins.op))
        };
        let target = || -> Result<u32, String> {
            let offset = ins
                .offset
                .ok_or_else(|| format!("{} is missing its `offset`", ins.op))?;
            if offset < 0 || offset as u64 > len as u64 {
                return Err(format!(
                    "jump target {offset} is out of range (function has {len} instructions)"
                ));
            }
            Ok(offset as u32)
        };
        let count = || -> Result<u32, String> {
            let n = ins
                .count
                .ok_or_else(|| format!("{} is missing its `count`", ins.op))?;
            u32::try_from(n).map_err(|_| format!("count {n} is too large"))
        };
        let argc = || -> Result<u16, String> {
            let n = ins
                .argc
                .ok_or_else(|| format!("{} is missing its `argc`", ins.op))?;
            u16::try_from(n).map_err(|_| format!("argc {n} is too large"))
        };
        // AWAIT, AWAIT_ALL, AWAIT_ANY: an optional integer `arg`, a timeout in milliseconds.
        let timeout_ms = || -> Result<u32, String> {
            match &ins.arg {
                None | Some(serde_json::Value::Null) => Ok(0),
                Some(v) => v
                    .as_u64()
                    .filter(|&ms| ms > 0)
                    .and_then(|ms| u32::try_from(ms).ok())
                    .ok_or_else(|| {
                        format!(
                            "{}'s `arg` must be a timeout in milliseconds (1 to 2^32-1)",
                            ins.op
                        )
                    }),
            }
        };
        let type_name = || -> Result<&str, String> {
            ins.type_name
                .as_deref()
                .ok_or_else(|| format!("{} is missing its `type_name`", ins.op))
        };
        Ok(match &ins.op {
            Opcode::LoadConst => {
                let arg = ins.arg.as_ref().ok_or("LOAD_CONST is missing its `arg`")?;
                let idx = arg
                    .as_u64()
                    .ok_or_else(|| format!("LOAD_CONST arg {arg} is not an index"))?;
                if idx >= self.constants.len() as u64 {
                    return Err(format!(
                        "constant index {idx} is out of range (pool has {})",
                        self.constants.len()
                    ));
                }
                SOp::LoadConst(idx as u32)
            }
            Opcode::Push => {
                let arg = ins.arg.as_ref().ok_or("PUSH is missing its `arg`")?;
                let value = match arg {
                    serde_json::Value::Null => Const::Nil,
                    serde_json::Value::Bool(b) => Const::Bool(*b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => Const::Int(i),
                        None => Const::Float(n.as_f64().unwrap_or(f64::NAN)),
                    },
                    serde_json::Value::String(s) => Const::Str(Arc::from(s.as_str())),
                    other => return Err(format!("PUSH arg {other} is not a scalar")),
                };
                self.constants.push(value);
                SOp::LoadConst(self.constants.len() as u32 - 1)
            }
            Opcode::LoadLocal => {
                let name = name()?;
                let global = self.global_for(name);
                match slot_of.get(name) {
                    Some(&slot) => SOp::LoadLocal { slot, global },
                    None => SOp::LoadGlobal(global),
                }
            }
            Opcode::StoreLocal => {
                let name = name()?;
                SOp::StoreLocal(*slot_of.get(name).ok_or("STORE_LOCAL slot missing")?)
            }
            Opcode::LoadGlobal => SOp::LoadGlobal(self.global_for(name()?)),
            Opcode::StoreGlobal => {
                let name = name()?;
                let id = self.global_for(name);
                SOp::StoreGlobal(id)
            }
            Opcode::Pop => SOp::Pop,
            Opcode::Dup => SOp::Dup,
            Opcode::Swap => SOp::Swap,
            Opcode::Add => SOp::Bin(BinOp::Add),
            Opcode::Sub => SOp::Bin(BinOp::Sub),
            Opcode::Mul => SOp::Bin(BinOp::Mul),
            Opcode::Div => SOp::Bin(BinOp::Div),
            Opcode::Mod => SOp::Bin(BinOp::Mod),
            Opcode::Neg => SOp::Neg,
            Opcode::Eq => SOp::Bin(BinOp::Eq),
            Opcode::Neq => SOp::Bin(BinOp::Neq),
            Opcode::Lt => SOp::Bin(BinOp::Lt),
            Opcode::Gt => SOp::Bin(BinOp::Gt),
            Opcode::Lte => SOp::Bin(BinOp::Lte),
            Opcode::Gte => SOp::Bin(BinOp::Gte),
            Opcode::And => SOp::And,
            Opcode::Or => SOp::Or,
            Opcode::Not => SOp::Not,
            Opcode::Jump => SOp::Jump(target()?),
            Opcode::JumpIfTrue => SOp::JumpIfTrue(target()?),
            Opcode::JumpIfFalse => SOp::JumpIfFalse(target()?),
            Opcode::Return => SOp::Return,
            Opcode::Call => {
                let n = ins.argc.ok_or("CALL is missing its `argc`")?;
                SOp::Call(u32::try_from(n).map_err(|_| format!("argc {n} is too large"))?)
            }
            Opcode::CallMethod => {
                let method = self.intern(name()?);
                let argc = argc()?;
                match ins.schema.as_deref() {
                    None => SOp::CallMethod { argc, name: method },
                    Some(schema) => {
                        let schema = *self
                            .schema_index
                            .get(schema)
                            .ok_or_else(|| format!("unknown schema `{schema}`"))?;
                        self.call_site(CallSite::MethodWithSchema {
                            name: method,
                            argc,
                            schema,
                        })
                    }
                }
            }
            Opcode::CallNative => {
                let native = self.intern(name()?);
                let argc = argc()?;
                self.call_site(CallSite::Native { name: native, argc })
            }
            Opcode::CallAgent
            | Opcode::CallAgentSchema
            | Opcode::CallAgentStream
            | Opcode::CallAgentChat
            | Opcode::CallModel
            | Opcode::CallModelSchema
            | Opcode::CallModelStream
            | Opcode::CallModelChat => {
                let flavour = match ins.op {
                    Opcode::CallAgentSchema | Opcode::CallModelSchema => AgentCallFlavour::Schema,
                    Opcode::CallAgentStream | Opcode::CallModelStream => AgentCallFlavour::Stream,
                    Opcode::CallAgentChat | Opcode::CallModelChat => AgentCallFlavour::Chat,
                    _ => AgentCallFlavour::Plain,
                };
                let agent_name = ins
                    .agent
                    .as_deref()
                    .or(ins.model.as_deref())
                    .ok_or_else(|| format!("{} is missing its `agent` (or `model`)", ins.op))?;
                let agent = *self
                    .agent_index
                    .get(agent_name)
                    .ok_or_else(|| format!("unknown agent `{agent_name}`"))?;
                let method = self.intern(ins.method.as_deref().unwrap_or("execute"));
                let argc = match ins.argc {
                    Some(n) => u16::try_from(n).map_err(|_| format!("argc {n} is too large"))?,
                    None => 1,
                };
                let schema = match ins.schema.as_deref() {
                    Some(schema) => Some(
                        *self
                            .schema_index
                            .get(schema)
                            .ok_or_else(|| format!("unknown schema `{schema}`"))?,
                    ),
                    None if flavour == AgentCallFlavour::Schema => {
                        return Err("CALL_AGENT_SCHEMA is missing its `schema`".into());
                    }
                    None => None,
                };
                self.call_site(CallSite::Agent {
                    flavour,
                    agent,
                    method,
                    argc,
                    schema,
                })
            }
            Opcode::CallTool => {
                let tool_name = ins
                    .tool
                    .as_deref()
                    .ok_or("CALL_TOOL is missing its `tool`")?;
                let tool = *self
                    .tool_index
                    .get(tool_name)
                    .ok_or_else(|| format!("unknown tool `{tool_name}`"))?;
                let method = ins
                    .method
                    .as_deref()
                    .or(ins.name.as_deref())
                    .ok_or("CALL_TOOL is missing its method `name`")?;
                let full = format!("{tool_name}::{method}");
                let function = *self
                    .function_index
                    .get(full.as_str())
                    .ok_or_else(|| format!("unknown tool method `{full}`"))?;
                let argc = argc()?;
                self.call_site(CallSite::Tool {
                    tool,
                    function,
                    argc,
                })
            }
            Opcode::HashMapGet
            | Opcode::HashMapSet
            | Opcode::HashMapDelete
            | Opcode::HashMapHas
            | Opcode::HashMapQuery => {
                let op = match ins.op {
                    Opcode::HashMapGet => HashmapOp::Get,
                    Opcode::HashMapSet => HashmapOp::Set,
                    Opcode::HashMapDelete => HashmapOp::Delete,
                    Opcode::HashMapHas => HashmapOp::Has,
                    _ => HashmapOp::Query,
                };
                let map_name = ins
                    .hashmap_name
                    .as_deref()
                    .ok_or("hashmap op is missing its `hashmap_name`")?;
                let hashmap = *self
                    .hashmap_index
                    .get(map_name)
                    .ok_or_else(|| format!("unknown hashmap `{map_name}`"))?;
                self.call_site(CallSite::Hashmap { op, hashmap })
            }
            Opcode::Emit => SOp::Emit,
            Opcode::EmitAwait => SOp::EmitAwait,
            Opcode::TryBegin => {
                let t = target()?;
                // The chain index is assigned in `build_chains`; keep the target for now.
                SOp::TryBegin(t)
            }
            Opcode::TryEnd => SOp::TryEnd,
            Opcode::Catch => SOp::Catch(u32::MAX),
            Opcode::Throw => SOp::Throw,
            Opcode::Propagate => SOp::Propagate,
            Opcode::BuildArray => SOp::BuildArray(count()?),
            Opcode::BuildMap => SOp::BuildMap(count()?),
            Opcode::BuildStruct => {
                let type_name = type_name()?;
                let n = count()?;
                let fields = match &ins.arg {
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .map(|item| {
                            item.as_str()
                                .ok_or("BUILD_STRUCT field name is not a string")
                        })
                        .collect::<Result<Vec<&str>, _>>()?,
                    _ => return Err("BUILD_STRUCT `arg` must list the field names".into()),
                };
                if fields.len() as u64 != n as u64 {
                    return Err(format!(
                        "BUILD_STRUCT has {} field names for {n} values",
                        fields.len()
                    ));
                }
                let target = self.shape_target(type_name, module)?;
                let fields = fields.iter().map(|f| self.intern(f)).collect();
                self.shapes.push(Shape {
                    type_name: Arc::from(type_name),
                    target,
                    fields,
                });
                SOp::BuildStruct(self.shapes.len() as u32 - 1)
            }
            Opcode::FieldGet => SOp::FieldGet(self.intern(name()?)),
            Opcode::FieldSet => SOp::FieldSet(self.intern(name()?)),
            Opcode::IndexGet => SOp::IndexGet,
            Opcode::IndexSet => SOp::IndexSet,
            Opcode::Cast => SOp::Cast(match type_name()? {
                "Int" => CastTarget::Int,
                "Float" => CastTarget::Float,
                "String" => CastTarget::String,
                "Bool" => CastTarget::Bool,
                _ => CastTarget::Other,
            }),
            Opcode::CheckType => SOp::CheckType(self.intern(type_name()?)),
            Opcode::Await => SOp::Await(timeout_ms()?),
            Opcode::AwaitAll => SOp::AwaitAll(count()?, timeout_ms()?),
            Opcode::AwaitAny => {
                let n = count()?;
                if n == 0 {
                    return Err("AWAIT_ANY needs at least one value".into());
                }
                SOp::AwaitAny(n, timeout_ms()?)
            }
            Opcode::SpawnAsync => SOp::SpawnAsync,
            Opcode::NilCoalescePrep => self.call_site(CallSite::NilCoalescePrep),
            Opcode::BuildRange => self.call_site(CallSite::BuildRange),
            Opcode::ListenBegin => {
                let listen_name = match &ins.arg {
                    Some(serde_json::Value::String(s)) => s.as_str(),
                    _ => return Err("LISTEN_BEGIN `arg` must name a listen block".into()),
                };
                let listen = *self
                    .listen_index
                    .get(listen_name)
                    .ok_or_else(|| format!("unknown listen block `{listen_name}`"))?;
                let argc = match ins.argc {
                    Some(n) => u16::try_from(n).map_err(|_| format!("argc {n} is too large"))?,
                    None => 1,
                };
                self.call_site(CallSite::Listen { listen, argc })
            }
            Opcode::MockModel => {
                let model_name = name()?;
                let agent = *self
                    .agent_index
                    .get(model_name)
                    .ok_or_else(|| format!("MOCK_MODEL names unknown model `{model_name}`"))?;
                let field = |key: &str| {
                    ins.arg.as_ref().and_then(|a| a.get(key)).map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                let reply = match (field("error"), field("response")) {
                    (Some(error), _) => MockReply::Error(error),
                    (None, Some(response)) => MockReply::Response(response),
                    (None, None) => {
                        return Err(format!(
                            "MOCK_MODEL for `{model_name}` has neither `response` nor `error`"
                        ));
                    }
                };
                self.mocks.push(MockDef { agent, reply });
                self.call_site(CallSite::MockModel {
                    mock: self.mocks.len() as u32 - 1,
                })
            }
            Opcode::Unknown(op) => return Err(format!("unknown opcode `{op}`")),
        })
    }

    fn call_site(&mut self, site: CallSite) -> SOp {
        self.call_sites.push(site);
        SOp::CallSite(self.call_sites.len() as u32 - 1)
    }

    fn shape_target(&mut self, type_name: &str, module: &IrModule) -> Result<ShapeTarget, String> {
        if let Some(&ty) = self.type_index.get(type_name) {
            return match self.types[ty as usize].kind {
                TypeDefKind::Struct { .. } => Ok(ShapeTarget::Struct(ty)),
                TypeDefKind::Enum { .. } => Err(format!("`{type_name}` is an enum, not a struct")),
            };
        }
        if let Some((enum_name, variant)) = type_name.rsplit_once("::")
            && let Some(&ty) = self.type_index.get(enum_name)
            && let TypeDefKind::Enum { variants } = &self.types[ty as usize].kind
            && let Some(v) = variants.iter().position(|v| &*v.name == variant)
        {
            return Ok(ShapeTarget::EnumVariant {
                ty,
                variant: v as u32,
            });
        }
        if let Some(&schema) = self.schema_index.get(type_name) {
            return Ok(ShapeTarget::Schema(schema));
        }
        if BUILTIN_STRUCTS.contains(&type_name) {
            return Ok(ShapeTarget::Builtin);
        }
        let _ = module;
        Err(format!("unknown type `{type_name}`"))
    }
}

/// A declared type string, or `None` when there is none to check (`any`, empty).
fn declared_type(ty: Option<&str>) -> Option<Arc<str>> {
    ty.map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("any"))
        .map(Arc::from)
}

/// The type name of a handler parameter: 7ad10db writes a typed parameter as the debug form
/// of its annotation (`TypeAnnotation { kind: Named("Q"), … }`), an untyped one as `any`.
fn annotated_name(ty: &str) -> Option<String> {
    let ty = ty.trim();
    if let Some(rest) = ty.split("Named(\"").nth(1) {
        return rest.split('"').next().map(str::to_string);
    }
    let plain =
        !ty.is_empty() && ty != "any" && ty.chars().all(|c| c.is_alphanumeric() || c == '_');
    plain.then(|| ty.to_string())
}

/// Resolves every `TRY_BEGIN` to a handler chain and every `CATCH` to the end of its chain.
/// A tool's method signatures and generated function schemas agree: parameter names are
/// unique, every schema names a method of this tool once, and its `properties` and `required`
/// name parameters of that method. An LLM is offered exactly these schemas, so a mismatch would
/// surface as arguments the method cannot take.
fn check_tool_signatures(tool: &model::Tool) -> Result<(), LoadError> {
    let owner = format!("tool {}", tool.name);
    for method in &tool.methods {
        let mut seen = std::collections::HashSet::new();
        for param in &method.params {
            if param.name == "self" || !seen.insert(param.name.as_str()) {
                return Err(LoadError::invalid(
                    format!("{}::{}", tool.name, method.name),
                    None,
                    format!("parameter `{}` is listed twice or named `self`", param.name),
                ));
            }
        }
    }
    let mut described = std::collections::HashSet::new();
    for schema in &tool.tool_schemas {
        let method = schema
            .method_name
            .strip_prefix(tool.name.as_str())
            .and_then(|rest| rest.strip_prefix("::"))
            .and_then(|m| tool.methods.iter().find(|f| f.name == m));
        let Some(method) = method else {
            return Err(LoadError::invalid(
                owner,
                None,
                format!(
                    "function schema `{}` names no method of this tool",
                    schema.method_name
                ),
            ));
        };
        let fail = |reason: String| {
            LoadError::invalid(format!("{}::{}", tool.name, method.name), None, reason)
        };
        if !described.insert(method.name.as_str()) {
            return Err(fail("two function schemas for this method".into()));
        }
        let params = &schema.parameters;
        if params.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(fail(
                "its function schema's `parameters` is not a JSON Schema of type object".into(),
            ));
        }
        let is_param = |name: &str| method.params.iter().any(|p| p.name == name);
        let properties = match params.get("properties") {
            None => Default::default(),
            Some(serde_json::Value::Object(props)) => props.clone(),
            Some(_) => {
                return Err(fail(
                    "its function schema's `properties` is not an object".into(),
                ));
            }
        };
        if let Some(name) = properties.keys().find(|k| !is_param(k)) {
            return Err(fail(format!(
                "its function schema describes `{name}`, which is not a parameter"
            )));
        }
        match params.get("required") {
            None => {}
            Some(serde_json::Value::Array(required)) => {
                for name in required {
                    match name.as_str() {
                        Some(name) if properties.contains_key(name) => {}
                        _ => {
                            return Err(fail(format!(
                                "its function schema requires {name}, which it does not describe"
                            )));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(fail(
                    "its function schema's `required` is not an array".into(),
                ));
            }
        }
    }
    Ok(())
}

fn build_chains(
    instructions: &[Instruction],
    code: &mut [SOp],
    cx: &mut Lowerer,
) -> Result<Vec<CatchChain>, (usize, String)> {
    let mut chains = Vec::new();
    let mut chain_of_catch: FxHashMap<u32, u32> = FxHashMap::default();
    // The end of the chain whose first CATCH is at `first`.
    let chain_end = |code: &[SOp], first: u32, at: usize| -> Result<u32, (usize, String)> {
        let first_idx = first as usize;
        if first_idx >= code.len() || !matches!(code[first_idx], SOp::Catch(_)) {
            return Err((at, format!("TRY_BEGIN target {first} is not a CATCH")));
        }
        match first_idx.checked_sub(1).map(|i| code[i]) {
            Some(SOp::Jump(end)) if end > first => Ok(end),
            _ => Err((
                at,
                format!("the handler chain at {first} is not preceded by a JUMP past its clauses"),
            )),
        }
    };
    for pc in 0..code.len() {
        let SOp::TryBegin(first) = code[pc] else {
            continue;
        };
        if first as usize <= pc {
            return Err((pc, format!("TRY_BEGIN target {first} does not follow it")));
        }
        let end = chain_end(code, first, pc)?;
        let mut clauses = Vec::new();
        let mut scan = first as usize;
        while scan < end as usize {
            match code[scan] {
                SOp::TryBegin(nested_first) => {
                    let nested_end = chain_end(code, nested_first, scan)?;
                    if nested_end as usize <= scan || nested_end > end {
                        return Err((scan, "nested handler chain overlaps its parent".into()));
                    }
                    scan = nested_end as usize;
                }
                SOp::Catch(_) => {
                    let filter = instructions[scan]
                        .type_name
                        .as_deref()
                        .map(|t| cx.intern(t));
                    clauses.push((scan as u32, filter));
                    scan += 1;
                }
                _ => scan += 1,
            }
        }
        let chain_idx = chains.len() as u32;
        for &(catch_pc, _) in &clauses {
            if chain_of_catch.insert(catch_pc, chain_idx).is_some() {
                return Err((
                    catch_pc as usize,
                    "CATCH belongs to two handler chains".into(),
                ));
            }
        }
        chains.push(CatchChain { clauses, end });
        code[pc] = SOp::TryBegin(chain_idx);
    }
    for (pc, op) in code.iter_mut().enumerate() {
        if let SOp::Catch(_) = op {
            match chain_of_catch.get(&(pc as u32)) {
                Some(&chain) => *op = SOp::Catch(chains[chain as usize].end),
                None => return Err((pc, "CATCH outside any handler chain".into())),
            }
        }
    }
    Ok(chains)
}

/// A loop's back edge `Jump` to its test `CmpJump(a, b) when → exit`, where the exit is the
/// op right after the jump, becomes the test itself with the outcome inverted, jumping back
/// into the body: one dispatch less per iteration. The copy keeps the test's span, so an
/// error in the comparison is reported where it was written.
fn rotate_loops(code: &mut [Op], spans: &mut [Span], ir_pc: &mut [u32]) {
    for p in 0..code.len() {
        let Op::Jump { target } = code[p] else {
            continue;
        };
        let t = target as usize;
        let after = (p + 1) as u32;
        let body = (t + 1) as u32;
        let rotated = match code.get(t) {
            Some(&Op::CmpJump {
                op,
                when,
                a,
                b,
                target: exit,
            }) if exit == after => Op::CmpJump {
                op,
                when: !when,
                a,
                b,
                target: body,
            },
            Some(&Op::CmpJumpK {
                op,
                when,
                a,
                target: exit,
                k,
            }) if exit == after => Op::CmpJumpK {
                op,
                when: !when,
                a,
                target: body,
                k,
            },
            Some(&Op::CmpJumpI {
                op,
                when,
                a,
                target: exit,
                imm,
            }) if exit == after => Op::CmpJumpI {
                op,
                when: !when,
                a,
                target: body,
                imm,
            },
            Some(&Op::JumpIf {
                cond,
                when,
                target: exit,
            }) if exit == after => Op::JumpIf {
                cond,
                when: !when,
                target: body,
            },
            _ => continue,
        };
        code[p] = rotated;
        spans[p] = spans[t];
        ir_pc[p] = ir_pc[t];
    }
}

/// An MCP server's `transport` must be one the runtime has a client for. The older HTTP+SSE
/// transport (MCP 2024-11-05, `transport: "sse"`) has none (the `rmcp` SDK offers no client
/// for it), so a program naming it is refused when it loads, naming the alternatives, rather
/// than failing later at the handshake.
fn check_mcp_transport(conn: &model::Connection) -> Result<(), LoadError> {
    let transport = conn.config.get("transport").and_then(|t| t.as_str());
    if transport.is_some_and(|t| t.trim().eq_ignore_ascii_case("sse")) {
        return Err(LoadError::invalid(
            format!("MCP server {}", conn.name),
            None,
            "transport `sse` (the HTTP+SSE transport of MCP 2024-11-05) is not supported: the \
             runtime has no client for it; use `transport: \"http\"` (streamable HTTP, MCP \
             2025-03-26 and later) with a server that offers it, or `transport: \"stdio\"`",
        ));
    }
    Ok(())
}
