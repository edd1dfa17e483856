//! A pickle reader that never runs code: it interprets the opcodes `torch.save` emits
//! (protocols 2 to 5) into a graph of plain values, and evaluates only the few callables a
//! state dict is made of (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and
//! its relatives). Any other global stays an inert name, and a call of it an inert value.
//!
//! Values live in an arena and the stack and memo hold indices, so a memoized container that
//! is changed later (`EMPTY_DICT`, `BINPUT`, `SETITEMS`) is seen changed wherever it is
//! fetched, and fetching a large value many times costs nothing: the work and memory are
//! linear in the input whatever the bytes.

/// An index into [`Pickle::nodes`].
pub type Id = usize;

/// The dtypes of torch's typed storages (`torch.FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    /// `torch.DoubleStorage`.
    F64,
    /// `torch.FloatStorage`.
    F32,
    /// `torch.HalfStorage`.
    F16,
    /// `torch.BFloat16Storage`.
    BF16,
    /// `torch.LongStorage`.
    I64,
    /// `torch.IntStorage`.
    I32,
    /// `torch.ShortStorage`.
    I16,
    /// `torch.CharStorage`.
    I8,
    /// `torch.ByteStorage`.
    U8,
    /// `torch.BoolStorage`.
    Bool,
}

impl StorageDtype {
    /// The dtype of `torch.<name>` when it names a typed storage.
    fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "DoubleStorage" => StorageDtype::F64,
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage's element type.
    pub dtype: StorageDtype,
    /// The storage's key (its record is `data/<key>` in the archive).
    pub key: String,
    /// Elements in the storage.
    pub storage_numel: u64,
    /// The view's first element in the storage.
    pub offset: u64,
    /// The view's shape.
    pub shape: Vec<u64>,
    /// The view's strides, in elements.
    pub stride: Vec<u64>,
}

/// One value of the graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A wider integer: its little-endian two's complement bytes (the legacy format's magic
    /// number is one).
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict (or `OrderedDict`), in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set or frozenset.
    Set(Vec<Id>),
    /// A global name that was not evaluated.
    Global(String, String),
    /// A typed storage named by a persistent id.
    Storage {
        /// Element type.
        dtype: StorageDtype,
        /// Record key.
        key: String,
        /// Elements.
        numel: u64,
    },
    /// A tensor.
    Tensor(TensorRef),
    /// An object made by calling something that is not evaluated: inert.
    Object,
}

/// A parsed pickle: the value graph and its root.
#[derive(Debug)]
pub struct Pickle {
    /// Every value, by id.
    pub nodes: Vec<Node>,
    /// The value the pickle returns.
    pub root: Id,
    /// Bytes consumed (the pickle's `STOP` included): legacy files hold several in a row.
    pub consumed: usize,
}

/// How a persistent id becomes a value: the zip format's `('storage', type, key, location,
/// numel)` and the legacy format's `(..., view_metadata)` share their first five fields. A
/// legacy storage that is a view of another (`view_metadata` not `None`, which only very old
/// PyTorch wrote) is refused rather than read at the wrong offset.
fn persistent_storage(nodes: &[Node], pid: Id) -> Option<Node> {
    let Node::Tuple(items) = &nodes[pid] else { return None };
    let field = |i: usize| items.get(i).map(|&id| &nodes[id]);
    if field(5).is_some_and(|view| *view != Node::None) {
        return None;
    }
    if field(0) != Some(&Node::Str("storage".into())) {
        return None;
    }
    let dtype = match field(1)? {
        Node::Global(module, name) if module == "torch" => StorageDtype::from_class(name)?,
        _ => return None,
    };
    let key = match field(2)? {
        Node::Str(s) => s.clone(),
        Node::Int(i) => i.to_string(),
        _ => return None,
    };
    let numel = match field(4)? {
        Node::Int(n) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    Some(Node::Storage { dtype, key, numel })
}

/// How deeply `_rebuild_from_type_v2` may wrap a rebuild call (torch wraps once).
const MAX_CALL_DEPTH: usize = 8;

/// What the stack holds: a value, or the mark that `MARK` pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Mark,
    Value(Id),
}

/// The interpreter's state.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, Id>,
}

/// Every error names the byte offset where it happened.
fn err<T>(pos: usize, what: impl std::fmt::Display) -> Result<T, String> {
    Err(format!("pickle byte {pos}: {what}"))
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let data = self.data;
        match self.pos.checked_add(n).and_then(|end| data.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => err(self.pos, format!("needs {n} more bytes, the pickle ends first")),
        }
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn len64(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| err(self.pos, format!("length {n} is too large")))
    }

    /// A text line (without its `\n`), as GLOBAL's operands are.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err(self.pos, "unterminated text line");
        };
        let text = std::str::from_utf8(&rest[..n]).or_else(|_| err(self.pos, "a line that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(text.to_string())
    }

    fn utf8(&mut self, n: usize) -> Result<Node, String> {
        let at = self.pos;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Node::Str(s.to_string())),
            Err(_) => err(at, "a string that is not UTF-8"),
        }
    }

    fn push(&mut self, node: Node) -> Id {
        self.nodes.push(node);
        let id = self.nodes.len() - 1;
        self.stack.push(Slot::Value(id));
        id
    }

    fn pop(&mut self) -> Result<Id, String> {
        match self.stack.pop() {
            Some(Slot::Value(id)) => Ok(id),
            Some(Slot::Mark) => err(self.pos, "a value was expected but the stack holds a mark"),
            None => err(self.pos, "the stack is empty"),
        }
    }

    fn top(&self) -> Result<Id, String> {
        match self.stack.last() {
            Some(Slot::Value(id)) => Ok(*id),
            _ => err(self.pos, "no value on top of the stack"),
        }
    }

    /// Pops everything down to the topmost mark (and the mark).
    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let Some(mark) = self.stack.iter().rposition(|s| *s == Slot::Mark) else {
            return err(self.pos, "no mark on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        items
            .into_iter()
            .map(|s| match s {
                Slot::Value(id) => Ok(id),
                Slot::Mark => err(self.pos, "a mark among marked values"),
            })
            .collect()
    }

    fn memo_put(&mut self, key: u64) -> Result<(), String> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), String> {
        let Some(&id) = self.memo.get(&key) else {
            return err(self.pos, format!("memo key {key} was never stored"));
        };
        self.stack.push(Slot::Value(id));
        Ok(())
    }

    fn int(&self, id: Id) -> Option<i64> {
        match self.nodes[id] {
            Node::Int(i) => Some(i),
            Node::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    fn ints(&self, id: Id) -> Option<Vec<u64>> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => {
                items.iter().map(|&i| self.int(i).and_then(|v| u64::try_from(v).ok())).collect()
            }
            _ => None,
        }
    }

    fn tuple(&self, id: Id) -> Option<&[Id]> {
        match &self.nodes[id] {
            Node::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// `callee(*args)` for the callables a state dict is made of; anything else is inert.
    fn call(&mut self, callee: Id, args: Id, depth: usize) -> Result<Node, String> {
        if depth > MAX_CALL_DEPTH {
            return err(self.pos, "rebuild calls nested too deeply");
        }
        let (module, name) = match &self.nodes[callee] {
            Node::Global(m, n) => (m.as_str(), n.as_str()),
            _ => return Ok(Node::Object),
        };
        let Some(a) = self.tuple(args).map(<[Id]>::to_vec) else { return Ok(Node::Object) };
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                let mut pairs = Vec::new();
                if let Some(&items) = a.first() {
                    if let Node::List(list) | Node::Tuple(list) = &self.nodes[items] {
                        for &pair in list {
                            match self.tuple(pair) {
                                Some(&[k, v]) => pairs.push((k, v)),
                                _ => {
                                    return err(self.pos, "OrderedDict built from something other than pairs")
                                }
                            }
                        }
                    }
                }
                Ok(Node::Dict(pairs))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let bad = |what: &str| err(self.pos, format!("{name}: {what}"));
                let [storage, offset, shape, stride, ..] = a[..] else {
                    return bad("needs storage, offset, size and stride");
                };
                let Node::Storage { dtype, key, numel } = &self.nodes[storage] else {
                    return bad("its first argument is not a storage");
                };
                let (dtype, key, storage_numel) = (*dtype, key.clone(), *numel);
                let Some(offset) = self.int(offset).and_then(|o| u64::try_from(o).ok()) else {
                    return bad("the storage offset is not a non-negative integer");
                };
                let (Some(shape), Some(stride)) = (self.ints(shape), self.ints(stride)) else {
                    return bad("size and stride must be tuples of non-negative integers");
                };
                if shape.len() != stride.len() {
                    return bad("size and stride differ in length");
                }
                Ok(Node::Tensor(TensorRef { dtype, key, storage_numel, offset, shape, stride }))
            }
            // A parameter is its data tensor.
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match a.first() {
                Some(&data) => Ok(self.nodes[data].clone()),
                None => err(self.pos, "_rebuild_parameter without arguments"),
            },
            // `_rebuild_from_type_v2(func, type, args, state)` is `func(*args)`.
            ("torch._utils", "_rebuild_from_type_v2") => match a[..] {
                [func, _, inner, ..] => self.call(func, inner, depth + 1),
                _ => err(self.pos, "_rebuild_from_type_v2 needs func, type and args"),
            },
            _ => Ok(Node::Object),
        }
    }

    fn set_items(&mut self, target: Id, items: &[Id]) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return err(self.pos, "SETITEMS with an odd number of values");
        }
        match &mut self.nodes[target] {
            Node::Dict(pairs) => {
                pairs.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            // Items set on an inert object are dropped with it.
            Node::Object => Ok(()),
            _ => err(self.pos, "SETITEM on a value that is not a dict"),
        }
    }

    fn append(&mut self, target: Id, items: &[Id]) -> Result<(), String> {
        match &mut self.nodes[target] {
            Node::List(list) | Node::Set(list) => {
                list.extend_from_slice(items);
                Ok(())
            }
            Node::Object => Ok(()),
            _ => err(self.pos, "APPEND on a value that is not a list"),
        }
    }

    /// Runs one opcode; `Ok(Some(root))` at `STOP`.
    fn step(&mut self) -> Result<Option<Id>, String> {
        let at = self.pos;
        let op = self.u8()?;
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return err(at, format!("pickle protocol {proto} is newer than 5"));
                }
            }
            0x95 => {
                // FRAME: a length hint only.
                self.u64()?;
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.stack.push(Slot::Mark),
            b'}' => {
                self.push(Node::Dict(Vec::new()));
            }
            b']' => {
                self.push(Node::List(Vec::new()));
            }
            b')' => {
                self.push(Node::Tuple(Vec::new()));
            }
            0x8f => {
                self.push(Node::Set(Vec::new()));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Node::List(items));
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.nodes.push(Node::Dict(Vec::new()));
                let id = self.nodes.len() - 1;
                self.set_items(id, &items)?;
                self.stack.push(Slot::Value(id));
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Node::Set(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n {
                    return err(at, "TUPLE of more values than the stack holds");
                }
                let mut items = vec![0; n];
                for slot in items.iter_mut().rev() {
                    *slot = self.pop()?;
                }
                self.push(Node::Tuple(items));
            }
            b'N' => {
                self.push(Node::None);
            }
            0x88 => {
                self.push(Node::Bool(true));
            }
            0x89 => {
                self.push(Node::Bool(false));
            }
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Node::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Node::Int(i64::from(v)));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Node::Int(i64::from(v)));
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a { usize::from(self.u8()?) } else { self.u32()? as usize };
                let bytes = self.take(n)?;
                if n > 8 {
                    let wide = Node::BigInt(bytes.to_vec());
                    self.push(wide);
                    return Ok(None);
                }
                // Little-endian two's complement, sign-extended from its last byte.
                let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { 0xff } else { 0 };
                let mut full = [fill; 8];
                full[..n].copy_from_slice(bytes);
                self.push(Node::Int(i64::from_le_bytes(full)));
            }
            b'G' => {
                let v = self.u64()?;
                // BINFLOAT is big-endian; `u64` read the bytes little-endian.
                self.push(Node::Float(f64::from_bits(v.swap_bytes())));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = self.utf8(n)?;
                self.push(s);
            }
            0x8c => {
                let n = usize::from(self.u8()?);
                let s = self.utf8(n)?;
                self.push(s);
            }
            0x8d => {
                let n = self.len64()?;
                let s = self.utf8(n)?;
                self.push(s);
            }
            b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'U' | b'C' => usize::from(self.u8()?),
                    b'T' | b'B' => self.u32()? as usize,
                    _ => self.len64()?,
                };
                let bytes = self.take(n)?.to_vec();
                self.push(Node::Bytes(bytes));
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Node::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.nodes[module], &self.nodes[name]) {
                    (Node::Str(m), Node::Str(n)) => {
                        let g = Node::Global(m.clone(), n.clone());
                        self.push(g);
                    }
                    _ => return err(at, "STACK_GLOBAL of values that are not strings"),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callee = self.pop()?;
                let node = self.call(callee, args, 0)?;
                self.push(node);
            }
            0x92 => {
                // NEWOBJ_EX: cls, args, kwargs.
                self.pop()?;
                self.pop()?;
                self.pop()?;
                self.push(Node::Object);
            }
            b'b' => {
                // BUILD sets an object's state: a state dict's `_metadata` and the like,
                // which loading weights does not need.
                self.pop()?;
                self.top()?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let target = self.top()?;
                self.set_items(target, &[key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, &items)?;
            }
            b'a' => {
                let value = self.pop()?;
                let target = self.top()?;
                self.append(target, &[value])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append(target, &items)?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let node = persistent_storage(&self.nodes, pid).ok_or_else(|| {
                    format!("pickle byte {at}: a persistent id that is not a typed storage (or is a storage view)")
                })?;
                self.push(node);
            }
            b'q' => {
                let key = u64::from(self.u8()?);
                self.memo_put(key)?;
            }
            b'r' => {
                let key = u64::from(self.u32()?);
                self.memo_put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = u64::from(self.u8()?);
                self.memo_get(key)?;
            }
            b'j' => {
                let key = u64::from(self.u32()?);
                self.memo_get(key)?;
            }
            b'0' => {
                self.stack.pop().ok_or_else(|| format!("pickle byte {at}: POP of an empty stack"))?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(Slot::Value(top));
            }
            other => return err(at, format!("opcode 0x{other:02x} is not one torch.save writes")),
        }
        Ok(None)
    }
}

/// The keys under which training scripts save a state dict inside a bigger dict, in the order
/// they are looked for (PyTorch Lightning and most scripts: `state_dict`; fairseq, Megatron and
/// many others: `model`; DeepSpeed: `module`; the PyTorch tutorials: `model_state_dict`).
pub const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model", "module", "model_state_dict"];

/// Interprets the pickle at the start of `data` up to its `STOP`.
pub fn parse(data: &[u8]) -> Result<Pickle, String> {
    let mut m = Machine { data, pos: 0, nodes: Vec::new(), stack: Vec::new(), memo: Default::default() };
    loop {
        if let Some(root) = m.step()? {
            return Ok(Pickle { nodes: m.nodes, root, consumed: m.pos });
        }
    }
}

impl Pickle {
    /// The state dict's `(key, tensor)` entries: the root's when it is a dict of string keys
    /// holding tensors; when it holds none, those of the first dict found under one of
    /// [`WRAPPER_KEYS`] (a training checkpoint's `{"model": state_dict, "optimizer": ...}`), up
    /// to two levels down. Entries whose value is not a tensor are skipped. `None` when the root
    /// is not a dict of string keys.
    pub fn tensors(&self) -> Option<Vec<(&str, &TensorRef)>> {
        let root = self.dict_tensors(self.root)?;
        if !root.is_empty() {
            return Some(root);
        }
        let mut frontier = vec![self.root];
        for _ in 0..2 {
            let mut next = Vec::new();
            for &node in &frontier {
                for key in WRAPPER_KEYS {
                    if let Some(inner) = self.dict_entry(node, key) {
                        match self.dict_tensors(inner) {
                            Some(t) if !t.is_empty() => return Some(t),
                            Some(_) => next.push(inner),
                            None => {}
                        }
                    }
                }
            }
            frontier = next;
        }
        Some(root)
    }

    /// The tensors of the dict `node` (`None`: not a dict of string keys).
    fn dict_tensors(&self, node: usize) -> Option<Vec<(&str, &TensorRef)>> {
        let Node::Dict(pairs) = &self.nodes[node] else { return None };
        let mut out = Vec::with_capacity(pairs.len());
        for &(k, v) in pairs {
            let Node::Str(key) = &self.nodes[k] else { return None };
            if let Node::Tensor(t) = &self.nodes[v] {
                out.push((key.as_str(), t));
            }
        }
        Some(out)
    }

    /// The value under the string key `key` of the dict `node`.
    fn dict_entry(&self, node: usize, key: &str) -> Option<usize> {
        let Node::Dict(pairs) = &self.nodes[node] else { return None };
        pairs.iter().find(|&&(k, _)| matches!(&self.nodes[k], Node::Str(s) if s == key)).map(|&(_, v)| v)
    }

    /// The strings of a list root (the legacy format's storage keys), or `None`.
    pub fn strings(&self) -> Option<Vec<&str>> {
        let Node::List(items) = &self.nodes[self.root] else { return None };
        items
            .iter()
            .map(|&i| match &self.nodes[i] {
                Node::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"w": tensor}` as protocol-2 `torch.save` writes it: storage key "0", float32, shape
    /// [2, 3] at offset 1, memoized storage class and an empty `backward_hooks` OrderedDict.
    fn state_dict_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)R");
        p.extend(b"q\x01(X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend(
            b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x07tQ",
        );
        p.extend(b"K\x01K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rq\x05tR");
        p.extend(b"u}X\x09\x00\x00\x00_metadataNsb.");
        p
    }

    #[test]
    fn reads_a_state_dict() {
        let p = parse(&state_dict_pickle()).expect("a well-formed pickle");
        let tensors = p.tensors().expect("a dict root");
        assert_eq!(tensors.len(), 1);
        let (name, t) = tensors[0];
        assert_eq!(name, "w");
        assert_eq!(
            *t,
            TensorRef {
                dtype: StorageDtype::F32,
                key: "0".into(),
                storage_numel: 7,
                offset: 1,
                shape: vec![2, 3],
                stride: vec![3, 1]
            }
        );
    }

    #[test]
    fn legacy_storage_ids_read_and_views_are_refused() {
        // ('storage', FloatStorage, '0', 'cpu', 7, view_metadata) as the legacy format writes it.
        let pid = |view: &[u8]| {
            let mut p = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000".to_vec();
            p.extend(b"X\x03\x00\x00\x00cpuK\x07");
            p.extend(view);
            p.extend(b"tQ.");
            p
        };
        let p = parse(&pid(b"N")).unwrap();
        assert_eq!(p.nodes[p.root], Node::Storage { dtype: StorageDtype::F32, key: "0".into(), numel: 7 });
        let err = parse(&pid(b"(X\x01\x00\x00\x00vK\x02K\x03t")).unwrap_err();
        assert!(err.contains("storage view"), "{err}");
    }

    #[test]
    fn a_memoized_dict_changed_later_is_seen_changed() {
        // d = {}; memo[0] = d; d["a"] = 1; return [memo[0]] — the list's dict has "a".
        let p = parse(b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s0]h\x00a.").unwrap();
        let Node::List(items) = &p.nodes[p.root] else { panic!("a list root") };
        assert!(matches!(&p.nodes[items[0]], Node::Dict(pairs) if pairs.len() == 1));
    }

    #[test]
    fn other_callables_stay_inert() {
        // os.system("x") is a name and an inert object, never a call.
        let p = parse(b"\x80\x02cos\nsystem\nX\x01\x00\x00\x00x\x85R.").unwrap();
        assert_eq!(p.nodes[p.root], Node::Object);
    }

    #[test]
    fn integers_of_every_width() {
        for (bytes, want) in [
            (&b"K\xff."[..], 255),
            (b"M\x01\x02.", 0x0201),
            (b"J\xfe\xff\xff\xff.", -2),
            (b"\x8a\x05\x00\x00\x00\x00\x01.", 1 << 32),
            (b"\x8a\x01\xff.", -1),
            (b"\x8a\x00.", 0),
        ] {
            let p = parse(bytes).unwrap();
            assert_eq!(p.nodes[p.root], Node::Int(want), "{bytes:?}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let p = state_dict_pickle();
        for cut in 0..p.len() {
            assert!(parse(&p[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_flips_never_panic() {
        let p = state_dict_pickle();
        for at in 0..p.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = p.clone();
                bad[at] ^= x;
                let _ = parse(&bad);
            }
        }
    }
}
