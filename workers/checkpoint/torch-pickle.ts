// Reading a PyTorch `.pth`/`.pt` file (torch.save since 1.6: a zip holding `data.pkl` and one file per
// storage) without running anything from it. A pickle is a small program for Python's unpickler;
// this is our own interpreter for the opcodes tensor checkpoints use, in which the only "callables"
// are a short allow-list we implement ourselves (dictionaries, torch's tensor rebuild functions and
// storage types). Any other global a file names is refused with a sentence, never looked up.
// The result is a flat list of tensors (nested dictionary keys joined with '.'), as safetensors
// bytes in memory, so every reader of ours that takes safetensors takes a .pth too.
import { PthFormatError } from '../api/errors.ts';
import { encodeSafetensors, concatBytes, type TensorToWrite } from './safetensors.ts';
import { DTYPE_BYTES, type StDtype } from './dtype.ts';

/** The largest data.pkl we interpret (a state dict's pickle is a few hundred KB). */
const MAX_PICKLE_BYTES = 64 * 1024 * 1024;
const MAX_STACK = 100_000;

interface ZipEntry {
  name: string;
  method: number;
  size: number;
  dataOffset: number;
}

class StorageRef {
  constructor(readonly dtype: StDtype, readonly key: string, readonly numel: number) {}
}

class TensorRef {
  constructor(readonly storage: StorageRef, readonly offset: number, readonly shape: number[], readonly stride: number[]) {}
}

/** A dictionary as the pickle builds it (string or number keys, insertion order kept). */
class PDict {
  readonly map = new Map<unknown, unknown>();
}

class StorageType {
  constructor(readonly dtype: StDtype) {}
}

type Callable = 'OrderedDict' | 'rebuild_tensor_v2' | 'rebuild_tensor' | 'rebuild_parameter';

class Global {
  constructor(readonly fn: Callable) {}
}

const STORAGES: Record<string, StDtype> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

function allowedGlobal(module: string, name: string, file: string): Global | StorageType {
  if (module === 'collections' && name === 'OrderedDict') return new Global('OrderedDict');
  if (module === 'torch._utils' && name === '_rebuild_tensor_v2') return new Global('rebuild_tensor_v2');
  if (module === 'torch._utils' && name === '_rebuild_tensor') return new Global('rebuild_tensor');
  if (module === 'torch._utils' && name === '_rebuild_parameter') return new Global('rebuild_parameter');
  if (module === 'torch' && name in STORAGES) return new StorageType(STORAGES[name]);
  throw new PthFormatError(file, `it asks to run "${module}.${name}" while loading. LoRA Studio never runs code from a file, and a plain tensor checkpoint does not need it; convert the file to .safetensors`);
}

// ------------------------------------------------------------------------------------------ zip

function u16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}
function u64(b: Uint8Array, o: number): number {
  if (o + 8 > b.length) return Number.MAX_SAFE_INTEGER;
  return Math.min(Number.MAX_SAFE_INTEGER, u32(b, o) + u32(b, o + 4) * 2 ** 32);
}

/** The entries of a zip archive (stored entries only are readable; torch stores everything). */
export function zipEntries(bytes: Uint8Array, file: string): ZipEntry[] {
  const bad = (problem: string) => new PthFormatError(file, problem);
  // end of central directory: the last signature within the final 64 KB + 22 bytes
  let eocd = -1;
  for (let o = bytes.length - 22; o >= Math.max(0, bytes.length - 22 - 65535); o--) {
    if (u32(bytes, o) === 0x06054b50) {
      eocd = o;
      break;
    }
  }
  if (eocd < 0) throw bad('it is not a zip archive (no end-of-directory record); it may be truncated');
  let count = u16(bytes, eocd + 10);
  let cdOffset = u32(bytes, eocd + 16);
  if (count === 0xffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || u32(bytes, loc) !== 0x07064b50) throw bad('its zip64 directory locator is missing');
    const z = u64(bytes, loc + 8);
    if (z + 56 > bytes.length || u32(bytes, z) !== 0x06064b50) throw bad('its zip64 directory record is missing');
    count = u64(bytes, z + 32);
    cdOffset = u64(bytes, z + 48);
  }
  const entries: ZipEntry[] = [];
  let o = cdOffset;
  for (let i = 0; i < count; i++) {
    if (o + 46 > bytes.length || u32(bytes, o) !== 0x02014b50) throw bad(`its zip directory is damaged at entry ${i}`);
    const method = u16(bytes, o + 10);
    let size = u32(bytes, o + 24);
    const nameLen = u16(bytes, o + 28);
    const extraLen = u16(bytes, o + 30);
    const commentLen = u16(bytes, o + 32);
    let local = u32(bytes, o + 42);
    if (o + 46 + nameLen + extraLen > bytes.length) throw bad(`its zip directory is damaged at entry ${i}`);
    const name = new TextDecoder().decode(bytes.subarray(o + 46, o + 46 + nameLen));
    // zip64 extra field: the 64-bit values of the fields set to 0xffffffff, in order
    let e = o + 46 + nameLen;
    const end = e + extraLen;
    while (e + 4 <= end) {
      const id = u16(bytes, e);
      const len = u16(bytes, e + 2);
      if (id === 0x0001) {
        let p = e + 4;
        if (size === 0xffffffff) (size = u64(bytes, p)), (p += 8);
        if (u32(bytes, o + 20) === 0xffffffff) p += 8;
        if (local === 0xffffffff) local = u64(bytes, p);
      }
      e += 4 + len;
    }
    if (local + 30 > bytes.length || u32(bytes, local) !== 0x04034b50) throw bad(`the zip entry "${name}" is damaged`);
    const dataOffset = local + 30 + u16(bytes, local + 26) + u16(bytes, local + 28);
    if (dataOffset + size > bytes.length) throw bad(`the zip entry "${name}" is cut off: the file is truncated. Download it again`);
    entries.push({ name, method, size, dataOffset });
    o += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

// --------------------------------------------------------------------------------------- pickle

const MARK = Symbol('mark');

/** Interpret a pickle whose globals are limited to the allow-list; persistent ids name storages. */
export function unpickle(data: Uint8Array, file: string): unknown {
  const bad = (problem: string) => new PthFormatError(file, problem);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: unknown[] = [];
  const memo = new Map<number, unknown>();
  let p = 0;
  const need = (n: number) => {
    if (p + n > data.length) throw bad('its pickle ends in the middle of an instruction; the file is truncated or damaged');
  };
  const byte = () => (need(1), data[p++]);
  const take = (n: number) => {
    if (!Number.isSafeInteger(n) || n < 0) throw bad('its pickle has an impossible length');
    need(n);
    const out = data.subarray(p, p + n);
    p += n;
    return out;
  };
  const le32 = () => {
    need(4);
    const v = view.getUint32(p, true);
    p += 4;
    return v;
  };
  const line = () => {
    const end = data.indexOf(0x0a, p);
    if (end < 0) throw bad('its pickle ends in the middle of a line');
    const s = new TextDecoder().decode(data.subarray(p, end));
    p = end + 1;
    return s;
  };
  const pop = () => {
    if (!stack.length) throw bad('its pickle pops from an empty stack');
    return stack.pop();
  };
  const popMark = (): unknown[] => {
    for (let i = stack.length - 1; i >= 0; i--) {
      if (stack[i] === MARK) {
        const items = stack.slice(i + 1);
        stack.length = i;
        return items;
      }
    }
    throw bad('its pickle has no mark where one is needed');
  };
  const push = (v: unknown) => {
    if (stack.length >= MAX_STACK) throw bad('its pickle nests too deeply');
    stack.push(v);
  };
  const top = () => {
    if (!stack.length) throw bad('its pickle reads an empty stack');
    return stack[stack.length - 1];
  };
  const text = (b: Uint8Array) => new TextDecoder('utf-8', { fatal: false }).decode(b);
  const setItems = (target: unknown, items: unknown[]) => {
    if (!(target instanceof PDict)) throw bad('its pickle sets items on something that is not a dictionary');
    if (items.length % 2) throw bad('its pickle sets a key without a value');
    for (let i = 0; i < items.length; i += 2) target.map.set(items[i], items[i + 1]);
  };
  const call = (fn: unknown, args: unknown): unknown => {
    if (!Array.isArray(args)) throw bad('its pickle calls with arguments that are not a tuple');
    if (!(fn instanceof Global)) throw bad('its pickle calls something that is not an allowed function');
    switch (fn.fn) {
      case 'OrderedDict':
        return new PDict();
      case 'rebuild_parameter':
        return args[0];
      case 'rebuild_tensor':
      case 'rebuild_tensor_v2': {
        const [storage, offset, shape, stride] = args;
        const ints = (v: unknown) => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
        if (!(storage instanceof StorageRef) || !Number.isSafeInteger(offset) || !ints(shape) || !ints(stride)) throw bad('a tensor in it is described with the wrong kinds of values');
        return new TensorRef(storage, offset as number, shape as number[], stride as number[]);
      }
    }
  };

  for (let steps = 0; ; steps++) {
    if (steps > 50_000_000) throw bad('its pickle runs too long');
    const op = byte();
    switch (op) {
      case 0x80: // PROTO
        byte();
        break;
      case 0x95: // FRAME
        take(8);
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        push(MARK);
        break;
      case 0x7d: // EMPTY_DICT
        push(new PDict());
        break;
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        push([]);
        break;
      case 0x74: // TUPLE
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x85: // TUPLE1
        push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        push([pop(), b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        push([pop(), b, c]);
        break;
      }
      case 0x64: { // DICT
        const d = new PDict();
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        const list = top();
        if (!Array.isArray(list)) throw bad('its pickle appends to something that is not a list');
        list.push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const list = top();
        if (!Array.isArray(list)) throw bad('its pickle appends to something that is not a list');
        list.push(...items);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x71: // BINPUT
        memo.set(byte(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(le32(), top());
        break;
      case 0x70: // PUT
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET
        let key: number;
        if (op === 0x68) key = byte();
        else if (op === 0x6a) key = le32();
        else key = Number(line());
        if (!memo.has(key)) throw bad('its pickle refers to a value it never stored');
        push(memo.get(key));
        break;
      }
      case 0x4a: // BININT
        need(4);
        push(view.getInt32(p, true));
        p += 4;
        break;
      case 0x4b: // BININT1
        push(byte());
        break;
      case 0x4d: // BININT2
        need(2);
        push(view.getUint16(p, true));
        p += 2;
        break;
      case 0x8a: { // LONG1
        const b = take(byte());
        let v = 0n;
        for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
        if (b.length && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
        push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x58: // BINUNICODE
        push(text(take(le32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(text(take(byte())));
        break;
      case 0x8d: { // BINUNICODE8
        const lo = le32();
        const hi = le32();
        push(text(take(lo + hi * 2 ** 32)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        push(text(take(byte())));
        break;
      case 0x54: // BINSTRING
        push(text(take(le32())));
        break;
      case 0x43: // SHORT_BINBYTES
        push(take(byte()).slice());
        break;
      case 0x42: // BINBYTES
        push(take(le32()).slice());
        break;
      case 0x47: // BINFLOAT
        need(8);
        push(view.getFloat64(p, false));
        p += 8;
        break;
      case 0x63: { // GLOBAL
        const module = line();
        push(allowedGlobal(module, line(), file));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw bad('its pickle names a global with something that is not text');
        push(allowedGlobal(module, name, file));
        break;
      }
      case 0x52: // REDUCE
      case 0x81: { // NEWOBJ
        const args = pop();
        push(call(pop(), args));
        break;
      }
      case 0x62: // BUILD: state set on an object (an OrderedDict's _metadata): nothing we need
        pop();
        break;
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!Array.isArray(pid) || pid[0] !== 'storage' || !(pid[1] instanceof StorageType) || typeof pid[2] !== 'string' || !Number.isSafeInteger(pid[4])) {
          throw bad('it refers to data that is not a tensor storage');
        }
        push(new StorageRef(pid[1].dtype, pid[2], pid[4] as number));
        break;
      }
      default:
        throw bad(`its pickle uses instruction 0x${op.toString(16)}, which tensor checkpoints do not need`);
    }
  }
}

// ------------------------------------------------------------------------------------ the file

/** Whether the bytes start like a zip archive (torch.save since 1.6) or like a legacy torch pickle. */
export function looksLikeTorchFile(first: Uint8Array): boolean {
  return (first[0] === 0x50 && first[1] === 0x4b && first[2] === 0x03 && first[3] === 0x04) || (first[0] === 0x80 && first[1] >= 2);
}

/** The tensors of a torch checkpoint, keys of nested dictionaries joined with '.', as safetensors bytes. */
export function torchFileToSafetensors(bytes: Uint8Array, file: string): Uint8Array {
  const bad = (problem: string) => new PthFormatError(file, problem);
  if (bytes[0] === 0x80) throw bad('it was saved by PyTorch older than 1.6 (the legacy format), which LoRA Studio does not read; re-save it with a current PyTorch or convert it to .safetensors');
  const entries = zipEntries(bytes, file);
  const pkl = entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (!pkl) throw bad('it is a zip archive without data.pkl, so not a PyTorch checkpoint');
  const root = pkl.name.slice(0, -'data.pkl'.length);
  const order = entries.find((e) => e.name === `${root}byteorder`);
  if (order && new TextDecoder().decode(bytes.subarray(order.dataOffset, order.dataOffset + order.size)).trim() !== 'little') throw bad('its tensors are stored big-endian');
  if (pkl.method !== 0) throw bad('its data.pkl is compressed, which torch.save never does');
  if (pkl.size > MAX_PICKLE_BYTES) throw bad(`its data.pkl is ${pkl.size} bytes; a tensor checkpoint's is far smaller`);
  const value = unpickle(bytes.subarray(pkl.dataOffset, pkl.dataOffset + pkl.size), file);
  const storages = new Map(entries.filter((e) => e.name.startsWith(`${root}data/`)).map((e) => [e.name.slice(root.length + 5), e]));
  const tensors: TensorToWrite[] = [];
  const seen = new Set<string>();
  const walk = (v: unknown, prefix: string) => {
    if (v instanceof PDict) {
      for (const [k, x] of v.map) {
        if (typeof k !== 'string' && typeof k !== 'number') throw bad('a dictionary in it has a key that is not text');
        walk(x, prefix ? `${prefix}.${k}` : String(k));
      }
      return;
    }
    if (!(v instanceof TensorRef)) return; // numbers, text and lists (training steps, names) are not tensors
    if (seen.has(prefix)) throw bad(`it describes the tensor "${prefix}" twice`);
    seen.add(prefix);
    const s = v.storage;
    const size = DTYPE_BYTES[s.dtype];
    const numel = v.shape.reduce((a, b) => a * b, 1);
    // contiguous (row-major) strides only; a state dict's tensors are
    let expect = 1;
    for (let i = v.shape.length - 1; i >= 0; i--) {
      if (v.shape[i] !== 1 && v.stride[i] !== expect) throw bad(`the tensor "${prefix}" is a non-contiguous view; save its .contiguous() copy`);
      expect *= v.shape[i];
    }
    const entry = storages.get(s.key);
    if (!entry) throw bad(`the storage of tensor "${prefix}" is missing from the archive`);
    if (entry.method !== 0) throw bad(`the storage of tensor "${prefix}" is compressed, which torch.save never does`);
    const from = v.offset * size;
    const to = from + numel * size;
    if (to > entry.size || s.numel * size > entry.size) throw bad(`the tensor "${prefix}" reaches past its storage; the file is damaged`);
    tensors.push({ name: prefix, dtype: s.dtype, shape: v.shape, data: bytes.slice(entry.dataOffset + from, entry.dataOffset + to) });
  };
  walk(value, '');
  if (!tensors.length) throw bad('it holds no tensors');
  return concatBytes(encodeSafetensors(tensors, { 'lorastudio.converted-from': 'pth' }));
}

/** PyTorch files larger than this are not read into memory (LoRAs and embeddings are far smaller). */
export const MAX_TORCH_FILE_BYTES = 1024 * 1024 * 1024;
