//! [`Vm`]: the per-program, immutable part of the interpreter, built once from a
//! [`Program`] and shared by every execution through `Arc`.

use std::sync::Arc;

use concerto_ir::{
    Const, FuncId, FunctionKind, GlobalKind, NameId, Program, ShapeTarget, TypeDefKind,
};
use rustc_hash::FxHashMap;

use crate::builtins;
use crate::methods::Method;
use crate::value::{EnumObj, FuncRef, RefKind, RefValue, Str, StructObj, StructType, Value};

/// How a `BUILD_STRUCT` site assembles its value.
pub(crate) struct ShapeLayout {
    pub(crate) kind: ShapeKind,
    /// The layout of the built struct (or of the variant payload).
    pub(crate) ty: Arc<StructType>,
    /// For each value on the stack (literal order), its index in `ty.fields`; `None` when
    /// the literal order already is the layout order.
    pub(crate) order: Option<Vec<u32>>,
}

pub(crate) enum ShapeKind {
    Struct,
    EnumVariant { ty: u32, variant: u32 },
}

/// The per-program interpreter state that never changes during execution.
pub struct Vm {
    pub(crate) program: Arc<Program>,
    pub(crate) consts: Vec<Value>,
    /// Initial value of every global (`Unset` for constants not yet initialised).
    pub(crate) global_init: Vec<Value>,
    /// Method name → built-in method, by [`NameId`].
    pub(crate) methods: Vec<Method>,
    pub(crate) shapes: Vec<ShapeLayout>,
    /// User methods by type key: (method name, function), a short list per type.
    pub(crate) methods_by_type: Vec<Vec<(NameId, FuncId)>>,
    /// Type name → type key (declared types and schemas).
    pub(crate) type_keys: FxHashMap<Arc<str>, u32>,
    /// The value bound to `self` in tool methods, by tool index.
    pub(crate) tool_instances: Vec<Value>,
    /// Function names by closure text (`$closure_0`) and other callable strings.
    pub(crate) callable_names: FxHashMap<Arc<str>, FuncId>,
    /// The same for the string constants that name functions, by the address of their
    /// text: a closure value is usually that very constant, so a call finds its function
    /// without hashing the name.
    pub(crate) callable_consts: FxHashMap<usize, FuncId>,
    /// Registry id for reference names (see [`RefValue::program`]).
    pub(crate) registry_id: u16,
}

impl Drop for Vm {
    fn drop(&mut self) {
        crate::value::registry::unregister(self.registry_id);
    }
}

impl Vm {
    /// Prepares a program for execution.
    pub fn new(program: Arc<Program>) -> Arc<Vm> {
        let consts: Vec<Value> = program.constants.iter().map(const_value).collect();

        let mut type_keys: FxHashMap<Arc<str>, u32> = FxHashMap::default();
        let mut struct_types = Vec::with_capacity(program.types.len());
        for (idx, ty) in program.types.iter().enumerate() {
            type_keys.insert(ty.name.clone(), idx as u32);
            struct_types.push(match &ty.kind {
                TypeDefKind::Struct { fields } => Some(Arc::new(StructType {
                    name: ty.name.clone(),
                    fields: fields.iter().map(|f| program.name(*f).clone()).collect(),
                    key: idx as u32,
                })),
                TypeDefKind::Enum { .. } => None,
            });
        }
        for (idx, schema) in program.schemas.iter().enumerate() {
            type_keys
                .entry(Arc::from(schema.name.as_str()))
                .or_insert((program.types.len() + idx) as u32);
        }
        let mut next_key = (program.types.len() + program.schemas.len()) as u32;

        // User methods: `Type::method`, `Type::Trait::method`, and trait defaults
        // `Trait::method` for types that implement the trait.
        let mut method_table: FxHashMap<(u32, NameId), FuncId> = FxHashMap::default();
        let mut trait_impls: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        let mut key_of = |name: &str, keys: &mut FxHashMap<Arc<str>, u32>| -> u32 {
            if let Some(&k) = keys.get(name) {
                return k;
            }
            let k = next_key;
            next_key += 1;
            keys.insert(Arc::from(name), k);
            k
        };
        let mut inherent: Vec<(u32, &str, FuncId)> = Vec::new();
        let mut via_trait: Vec<(u32, &str, FuncId)> = Vec::new();
        for (fid, func) in program.functions.iter().enumerate() {
            if func.kind != FunctionKind::Plain {
                continue;
            }
            let parts: Vec<&str> = func.name.split("::").collect();
            match parts.as_slice() {
                [ty, method] => {
                    inherent.push((key_of(ty, &mut type_keys), method, FuncId::new(fid as u32)))
                }
                [ty, tr, method] => {
                    via_trait.push((key_of(ty, &mut type_keys), method, FuncId::new(fid as u32)));
                    trait_impls.push((Arc::from(*ty), Arc::from(*tr)));
                }
                _ => {}
            }
        }
        let insert = |table: &mut FxHashMap<(u32, NameId), FuncId>, key: u32, method: &str, fid| {
            if let Some(name) = program.name_id(method) {
                table.entry((key, name)).or_insert(fid);
            }
        };
        for (key, method, fid) in inherent {
            insert(&mut method_table, key, method, fid);
        }
        for (key, method, fid) in via_trait {
            insert(&mut method_table, key, method, fid);
        }
        for (ty, tr) in &trait_impls {
            let Some(&key) = type_keys.get(ty) else {
                continue;
            };
            for (fid, func) in program.functions.iter().enumerate() {
                if let Some((owner, method)) = func.name.split_once("::")
                    && owner == &**tr
                    && !method.contains("::")
                {
                    insert(&mut method_table, key, method, FuncId::new(fid as u32));
                }
            }
        }

        let registry_id = crate::value::registry::register(crate::value::registry::Names {
            functions: program
                .functions
                .iter()
                .map(|f| f.name.to_string())
                .collect(),
            refs: vec![
                (
                    RefKind::Agent,
                    program.agents.iter().map(|a| a.decl.name.clone()).collect(),
                ),
                (
                    RefKind::Schema,
                    program.schemas.iter().map(|s| s.name.clone()).collect(),
                ),
                (
                    RefKind::Tool,
                    program.tools.iter().map(|t| t.decl.name.clone()).collect(),
                ),
                (
                    RefKind::Mcp,
                    program.connections.iter().map(|c| c.name.clone()).collect(),
                ),
                (
                    RefKind::Hashmap,
                    program.hashmaps.iter().map(|h| h.name.clone()).collect(),
                ),
                (
                    RefKind::Ledger,
                    program.ledgers.iter().map(|l| l.name.clone()).collect(),
                ),
                (
                    RefKind::Memory,
                    program.memories.iter().map(|m| m.name.clone()).collect(),
                ),
                (
                    RefKind::Pipeline,
                    program
                        .pipelines
                        .iter()
                        .map(|p| p.name.to_string())
                        .collect(),
                ),
                (
                    RefKind::Host,
                    program.hosts.iter().map(|h| h.name.clone()).collect(),
                ),
            ],
        });
        let r = |kind: RefKind, index: u32| {
            Value::Ref(RefValue {
                kind,
                program: registry_id,
                index,
            })
        };
        let global_init = program
            .globals
            .iter()
            .map(|g| match &g.kind {
                GlobalKind::Agent(i) => r(RefKind::Agent, *i),
                GlobalKind::Schema(i) => r(RefKind::Schema, *i),
                GlobalKind::Tool(i) => r(RefKind::Tool, *i),
                GlobalKind::Mcp(i) => r(RefKind::Mcp, *i),
                GlobalKind::Hashmap(i) => r(RefKind::Hashmap, *i),
                GlobalKind::Ledger(i) => r(RefKind::Ledger, *i),
                GlobalKind::Memory(i) => r(RefKind::Memory, *i),
                GlobalKind::Pipeline(i) => r(RefKind::Pipeline, *i),
                GlobalKind::Host(i) => r(RefKind::Host, *i),
                GlobalKind::Constant { .. } => Value::Unset,
                GlobalKind::EnumVariant { ty, variant } => {
                    let TypeDefKind::Enum { variants } = &program.types[*ty as usize].kind else {
                        return Value::Unset;
                    };
                    let def = &variants[*variant as usize];
                    match &def.fields {
                        Some(fields) if !fields.is_empty() => {
                            match builtins::enum_ctor_id(*ty, *variant) {
                                Some(id) => Value::Builtin(id),
                                None => Value::Unset,
                            }
                        }
                        _ => Value::Enum(Arc::new(EnumObj {
                            type_name: program.types[*ty as usize].name.clone(),
                            variant: def.name.clone(),
                            type_id: *ty,
                            variant_id: *variant,
                            field_names: None,
                            payload: Vec::new(),
                        })),
                    }
                }
                GlobalKind::External { function } => match builtins::lookup(&g.name) {
                    Some(value) => value,
                    None => match function {
                        Some(fid) => Value::Func(FuncRef {
                            program: registry_id,
                            id: *fid,
                        }),
                        None if g.name.contains("::") => Value::Path(Str::from(&*g.name)),
                        None => Value::Unset,
                    },
                },
            })
            .collect();

        let shapes = program
            .shapes
            .iter()
            .map(|shape| {
                let literal: Vec<Arc<str>> = shape
                    .fields
                    .iter()
                    .map(|f| program.name(*f).clone())
                    .collect();
                let (kind, declared) = match shape.target {
                    ShapeTarget::Struct(ty) => (
                        ShapeKind::Struct,
                        struct_types[ty as usize].as_ref().map(|t| t.fields.clone()),
                    ),
                    ShapeTarget::EnumVariant { ty, variant } => {
                        let declared = match &program.types[ty as usize].kind {
                            TypeDefKind::Enum { variants } => variants[variant as usize]
                                .fields
                                .as_ref()
                                .map(|f| f.iter().map(|n| program.name(*n).clone()).collect()),
                            TypeDefKind::Struct { .. } => None,
                        };
                        (ShapeKind::EnumVariant { ty, variant }, declared)
                    }
                    ShapeTarget::Schema(_) | ShapeTarget::Builtin => (ShapeKind::Struct, None),
                };
                // Layout: declared fields first (declaration order), then any extra literal
                // fields; values are placed by name.
                let mut fields = declared.unwrap_or_default();
                for name in &literal {
                    if !fields.iter().any(|f| f == name) {
                        fields.push(name.clone());
                    }
                }
                let order: Vec<u32> = literal
                    .iter()
                    .map(|name| fields.iter().position(|f| f == name).unwrap_or(0) as u32)
                    .collect();
                let identity = order.len() == fields.len()
                    && order.iter().enumerate().all(|(i, &o)| i as u32 == o);
                let key = type_keys.get(&shape.type_name).copied().unwrap_or(u32::MAX);
                let ty = Arc::new(StructType {
                    name: shape.type_name.clone(),
                    fields,
                    key,
                });
                let ty = match (&kind, shape.target) {
                    (ShapeKind::Struct, ShapeTarget::Struct(t)) if identity => {
                        struct_types[t as usize].clone().unwrap_or(ty)
                    }
                    _ => ty,
                };
                ShapeLayout {
                    kind,
                    ty,
                    order: if identity { None } else { Some(order) },
                }
            })
            .collect();

        let tool_instances = program
            .tools
            .iter()
            .map(|tool| {
                let key = type_keys
                    .get(tool.decl.name.as_str())
                    .copied()
                    .unwrap_or(u32::MAX);
                Value::Struct(StructObj::new(
                    Arc::new(StructType {
                        name: Arc::from(tool.decl.name.as_str()),
                        fields: Vec::new(),
                        key,
                    }),
                    Vec::new(),
                ))
            })
            .collect();

        let methods = program.names.iter().map(|n| Method::from_name(n)).collect();
        let mut methods_by_type: Vec<Vec<(NameId, FuncId)>> = Vec::new();
        for (&(key, name), &fid) in &method_table {
            let key = key as usize;
            if methods_by_type.len() <= key {
                methods_by_type.resize(key + 1, Vec::new());
            }
            methods_by_type[key].push((name, fid));
        }
        let callable_consts = consts_by_name(&consts, &program);
        let callable_names = program
            .functions
            .iter()
            .enumerate()
            .map(|(fid, f)| (f.name.clone(), FuncId::new(fid as u32)))
            .collect();

        Arc::new(Vm {
            program,
            consts,
            global_init,
            methods,
            shapes,
            methods_by_type,
            type_keys,
            tool_instances,
            callable_names,
            callable_consts,
            registry_id,
        })
    }

    /// The program this VM executes.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// The user method `name` of the type with key `key`.
    #[inline]
    pub(crate) fn user_method(&self, key: u32, name: NameId) -> Option<FuncId> {
        let list = self.methods_by_type.get(key as usize)?;
        list.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    }

    /// The type key of a runtime type name (for method lookup on runtime-built structs).
    pub(crate) fn type_key(&self, name: &str) -> u32 {
        self.type_keys.get(name).copied().unwrap_or(u32::MAX)
    }
}

fn const_value(c: &Const) -> Value {
    match c {
        Const::Nil => Value::Nil,
        Const::Bool(b) => Value::Bool(*b),
        Const::Int(i) => Value::Int(*i),
        Const::Float(f) => Value::Float(*f),
        Const::Str(s) => Value::Str(Str::from(&**s)),
    }
}

/// String constants that name a function, keyed by the address of their text.
fn consts_by_name(consts: &[Value], program: &Program) -> FxHashMap<usize, FuncId> {
    consts
        .iter()
        .filter_map(|c| match c {
            Value::Str(s) => program.function_id(s.as_str()).map(|f| (s.addr(), f)),
            _ => None,
        })
        .collect()
}
