// The echo service used by Sluice's tests, examples and benchmarks (field ids match the
// Kitex captures and the wire spec's vectors).
namespace go echo
namespace rs echo

struct EchoRequest {
    1: string message
}

struct EchoResponse {
    1: string message
}

exception EchoError {
    1: i32 code
    2: string message
}

service EchoService {
    EchoResponse Echo(1: EchoRequest req)
    EchoResponse EchoFail(1: EchoRequest req)
    EchoResponse EchoRaise(1: EchoRequest req) throws (1: EchoError err)
    oneway void EchoOneway(1: EchoRequest req)
    EchoResponse EchoBidi(1: EchoRequest req) (streaming.mode="bidirectional")
    EchoResponse EchoClient(1: EchoRequest req) (streaming.mode="client")
    EchoResponse EchoServer(1: EchoRequest req) (streaming.mode="server")
}
