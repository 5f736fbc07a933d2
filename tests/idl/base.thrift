// Types shared by tools.thrift: included as "base.thrift", so they are named base.X there.
namespace go base
namespace rs base

enum Tier {
    BRONZE = 1,
    SILVER,
    GOLD = 10,
}

struct Caller {
    1: required string name
    2: optional Tier tier
}

exception EchoError {
    1: i32 code
    2: string message
}
