//! Build script (not a module of the crate): compiles the vendored Kubernetes `.proto` files
//! under `src/api/proto/k8s` with protox (a Rust protobuf compiler, so no `protoc` is needed)
//! into one `FileDescriptorSet`, `$OUT_DIR/k8s_descriptors.bin`, which `api::proto` embeds and
//! decodes request bodies with.

use std::path::{Path, PathBuf};

const ROOT: &str = "src/api/proto/k8s";

fn proto_files(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {dir:?}: {e}"))
            .path();
        if path.is_dir() {
            proto_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed={ROOT}");
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    proto_files(root, root, &mut files);
    files.sort();
    let mut compiler = protox::Compiler::new([root]).unwrap_or_else(|e| panic!("protox: {e}"));
    compiler.include_imports(true).include_source_info(false);
    compiler
        .open_files(&files)
        .unwrap_or_else(|e| panic!("compiling the Kubernetes .proto files: {e:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("k8s_descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .unwrap_or_else(|e| panic!("writing the descriptor set: {e}"));
}
