//! Generates the volo-thrift EchoService client and server from the shared echo IDL.

fn main() {
    let idl = "../../idl/echo.thrift";
    println!("cargo:rerun-if-changed={idl}");
    println!("cargo:rerun-if-changed=build.rs");
    volo_build::Builder::thrift()
        .add_service(idl)
        .filename("echo_gen.rs".into())
        .write()
        .expect("volo-build generates the echo service");
}
