//! Compiles `tracegate/*.proto` with protox (pure Rust) so no `protoc` is needed at build time.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["tracegate/v1/envelope.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
