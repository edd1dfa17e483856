// Host emulation, included last: the driver. It reads a script on stdin, one command per line:
//
//   buf <index> <bytes> <path>|poison   a buffer, read from a file or filled with 0xFF bytes
//                                       (NaN in f32, bf16 and f16)
//   arg ptr <index> | arg at <index> <byte offset> | arg null | arg i32 <v> | arg u32 <v>
//   arg f32 <v> | arg i64 <v>          a pointer to a buffer (or into it), or a scalar
//   arg bytes <hex>                     a structure passed by value, its bytes in hex
//   arg tmap <index> <byte offset> <element bytes> <rank> <size0> .. <stride1> .. <box0> ..
//                                       an emulated TMA tensor map of rank 1 to 5 over buffer
//                                       <index> from <byte offset>: rank sizes in elements
//                                       innermost first, rank − 1 strides in bytes, rank boxes
//   launch <kernel> <grid x> <grid y> <grid z> <block> <cluster> <dynamic shared bytes>
//   dump <index> <path>                 writes a buffer to a file
//
// Arguments accumulate until `launch`, which checks them against the kernel's parameter types.
// The generated translation unit defines `emu_kernels()`, the kernels it can launch. See emu.hpp.
#pragma once

#include <fstream>
#include <iostream>
#include <sstream>
#include <type_traits>

namespace emu {

struct Arg {
    std::string kind;
    long long int_value = 0;
    long long offset = 0;  // bytes into the buffer, for `at`
    double float_value = 0.0;
    std::vector<unsigned char> bytes;
    std::vector<unsigned long long> map;
};

struct Args {
    std::vector<Arg> list;
    size_t next = 0;
    std::vector<std::vector<unsigned char>>* bufs = nullptr;

    template <class A>
    A get() {
        if (next >= list.size()) fail("too few arguments for the kernel");
        const Arg& a = list[next++];
        if constexpr (std::is_pointer_v<A>) {
            if (a.kind == "null") return nullptr;
            if (a.kind != "ptr" && a.kind != "at")
                fail("argument " + std::to_string(next - 1) + " should be a pointer, not " + a.kind);
            auto& buf = bufs->at((size_t)a.int_value);
            if (a.offset < 0 || (size_t)a.offset > buf.size()) fail("a pointer past the end of its buffer");
            return reinterpret_cast<A>(buf.data() + a.offset);
        } else if constexpr (std::is_same_v<A, int>) {
            if (a.kind != "i32") fail("argument " + std::to_string(next - 1) + " should be i32, not " + a.kind);
            return (int)a.int_value;
        } else if constexpr (std::is_same_v<A, unsigned>) {
            if (a.kind != "u32") fail("argument " + std::to_string(next - 1) + " should be u32, not " + a.kind);
            return (unsigned)a.int_value;
        } else if constexpr (std::is_same_v<A, long long>) {
            if (a.kind != "i64") fail("argument " + std::to_string(next - 1) + " should be i64, not " + a.kind);
            return a.int_value;
        } else if constexpr (std::is_same_v<A, float>) {
            if (a.kind != "f32") fail("argument " + std::to_string(next - 1) + " should be f32, not " + a.kind);
            return (float)a.float_value;
        } else if (a.kind == "tmap") {
            static_assert(std::is_trivially_copyable_v<A>, "unsupported kernel parameter type");
            if (sizeof(A) < sizeof(TensorMap)) fail("a tensor map argument for a parameter too small to hold one");
            TensorMap m{};
            auto& buf = bufs->at((size_t)a.map[0]);
            if (a.map[1] > buf.size()) fail("a tensor map past the end of its buffer");
            m.base = buf.data() + a.map[1];
            m.elem_bytes = (uint32_t)a.map[2];
            m.rank = (uint32_t)a.map[3];
            for (int i = 0; i < 5; i++) m.dims[i] = m.box[i] = 1;
            for (uint32_t i = 0; i < m.rank; i++) m.dims[i] = a.map[4 + i];
            for (uint32_t i = 0; i + 1 < m.rank; i++) m.strides[i] = a.map[4 + m.rank + i];
            for (uint32_t i = 0; i < m.rank; i++) m.box[i] = (uint32_t)a.map[3 + 2 * m.rank + i];
            m.magic = kTensorMapMagic;
            A v;
            std::memset(&v, 0, sizeof v);
            std::memcpy(&v, &m, sizeof m);
            return v;
        } else {
            static_assert(std::is_trivially_copyable_v<A>, "unsupported kernel parameter type");
            if (a.kind != "bytes" || a.bytes.size() != sizeof(A))
                fail("argument " + std::to_string(next - 1) + " should be a structure of " + std::to_string(sizeof(A)) +
                     " bytes");
            A v;
            std::memcpy(&v, a.bytes.data(), sizeof(A));
            return v;
        }
    }
};

using Launcher = std::function<void(Args&, Dim3, unsigned, unsigned, size_t)>;

/// A launcher for kernel `f`: unpacks the script's arguments in order and launches.
template <class... A>
Launcher kernel(void (*f)(A...)) {
    return [f](Args& args, Dim3 grid, unsigned block, unsigned cluster, size_t dynamic) {
        std::tuple<A...> values{args.get<A>()...};
        if (args.next != args.list.size()) fail("too many arguments for the kernel");
        launch(grid, block, cluster, dynamic, [&] { std::apply(f, values); });
    };
}

}  // namespace emu

std::map<std::string, emu::Launcher> emu_kernels();

int main() {
    auto kernels = emu_kernels();
    std::vector<std::vector<unsigned char>> bufs;
    emu::Args args;
    args.bufs = &bufs;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string cmd;
        if (!(in >> cmd)) continue;
        if (cmd == "buf") {
            size_t index, bytes;
            std::string path;
            in >> index >> bytes >> path;
            if (index != bufs.size()) emu::fail("buffers must be declared in order");
            bufs.emplace_back(bytes, 0xFF);
            if (path != "poison") {
                std::ifstream f(path, std::ios::binary);
                if (!f.read(reinterpret_cast<char*>(bufs.back().data()), (std::streamsize)bytes))
                    emu::fail("cannot read " + path);
            }
        } else if (cmd == "arg") {
            emu::Arg a;
            in >> a.kind;
            if (a.kind == "f32") {
                in >> a.float_value;
            } else if (a.kind == "bytes") {
                std::string hex;
                in >> hex;
                for (size_t i = 0; i + 1 < hex.size(); i += 2)
                    a.bytes.push_back((unsigned char)std::stoul(hex.substr(i, 2), nullptr, 16));
            } else if (a.kind == "tmap") {
                unsigned long long buf, offset, elem, rank;
                in >> buf >> offset >> elem >> rank;
                if (rank < 1 || rank > 5) emu::fail("a tensor map of rank " + std::to_string(rank));
                a.map = {buf, offset, elem, rank};
                for (unsigned long long i = 0; i < 3 * rank - 1; i++) {
                    unsigned long long v;
                    in >> v;
                    a.map.push_back(v);
                }
            } else if (a.kind == "at") {
                in >> a.int_value >> a.offset;
            } else if (a.kind != "null") {
                in >> a.int_value;
            }
            args.list.push_back(a);
        } else if (cmd == "launch") {
            std::string name;
            emu::Dim3 grid;
            unsigned block, cluster;
            size_t dynamic;
            in >> name >> grid.x >> grid.y >> grid.z >> block >> cluster >> dynamic;
            auto it = kernels.find(name);
            if (it == kernels.end()) emu::fail("no kernel " + name);
            it->second(args, grid, block, cluster, dynamic);
            args.list.clear();
            args.next = 0;
        } else if (cmd == "dump") {
            size_t index;
            std::string path;
            in >> index >> path;
            std::ofstream f(path, std::ios::binary);
            f.write(reinterpret_cast<const char*>(bufs.at(index).data()), (std::streamsize)bufs.at(index).size());
        } else {
            emu::fail("unknown command " + cmd);
        }
    }
    return 0;
}
