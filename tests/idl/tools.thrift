// The echo service as `sluice call`, `sluice decode` and payload routing see it: field ids
// match idl/echo.thrift (so the volo-thrift and Sluice echo servers answer it), with more
// fields, an include, a typedef and a declared exception.
//
// Against `sluice echo`, `Raise` returns its argument as the result's field 2: the declared
// exception `err` (the echo server turns args field 1 into result field 0 and leaves any other
// args struct as it is).
include "base.thrift"

namespace go tools
namespace rs tools

typedef string TenantId

struct EchoRequest {
    1: string message
    2: optional TenantId tenant
    3: optional list<i32> numbers
    4: optional map<string, base.Tier> tiers
    5: optional base.Caller caller
    6: optional binary blob
    7: optional bool loud
    8: optional double ratio
}

struct EchoResponse {
    1: string message
    2: optional TenantId tenant
    3: optional list<i32> numbers
    4: optional map<string, base.Tier> tiers
    5: optional base.Caller caller
    6: optional binary blob
    7: optional bool loud
    8: optional double ratio
}

service EchoService {
    EchoResponse Echo(1: EchoRequest req) throws (2: base.EchoError err)
    EchoResponse EchoFail(1: EchoRequest req)
    oneway void EchoOneway(1: EchoRequest req)
    EchoResponse Raise(2: base.EchoError err) throws (2: base.EchoError err)
    // `sluice echo` waits 300 ms before answering a method named Sleep<N>.
    EchoResponse Sleep300(1: EchoRequest req)
    EchoResponse EchoBidi(1: EchoRequest req) (streaming.mode="bidirectional")
    // `sluice echo` echoes one message, then ends the stream with an error.
    EchoResponse EchoBidiFail(1: EchoRequest req) (streaming.mode="bidirectional")
    EchoResponse EchoClient(1: EchoRequest req) (streaming.mode="client")
    EchoResponse EchoServer(1: EchoRequest req) (streaming.mode="server")
}
