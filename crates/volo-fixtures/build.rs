//! Generates the volo-thrift and volo-grpc EchoService clients and servers from the shared echo
//! IDLs.

fn main() {
    let thrift = "../../idl/echo.thrift";
    let proto = "../../idl/echo.proto";
    println!("cargo:rerun-if-changed={thrift}");
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");
    volo_build::Builder::thrift()
        .add_service(thrift)
        .filename("echo_gen.rs".into())
        .write()
        .expect("volo-build generates the thrift echo service");
    volo_build::Builder::protobuf()
        .add_service(proto)
        .include_dirs(vec!["../../idl".into()])
        .filename("echo_grpc_gen.rs".into())
        .write()
        .expect("volo-build generates the protobuf echo service");
}
