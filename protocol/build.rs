//! Generates the protobuf messages and the async ttrpc client and server from
//! `proto/agent.proto` (pure Rust parser: no `protoc` needed at build time).

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/agent.proto");

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen of proto/agent.proto");

    // The generated files start with inner attributes and `//!` comments,
    // which `include!` does not accept: drop them (lib.rs sets its own allows).
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&out_dir.join(name));
    }
}

fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).expect("read generated file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .collect();
    fs::write(path, kept.join("\n")).expect("write generated file");
}
