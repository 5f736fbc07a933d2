// A thrift file with a syntax error on line 5.
struct EchoRequest {
    1: string message
}
struct Broken {
    1: string message
    2 string missing_colon
}
