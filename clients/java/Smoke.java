import com.google.protobuf.ByteString;
import com.google.protobuf.Duration;
import com.tiercache.v1.CacheServiceGrpc;
import com.tiercache.v1.FillOutcome;
import com.tiercache.v1.FillRequest;
import com.tiercache.v1.FillResponse;
import com.tiercache.v1.GetOrSetOutcome;
import com.tiercache.v1.GetOrSetRequest;
import com.tiercache.v1.GetOrSetResponse;
import com.tiercache.v1.GetOutcome;
import com.tiercache.v1.GetRequest;
import com.tiercache.v1.GetResponse;
import com.tiercache.v1.SetOutcome;
import com.tiercache.v1.SetRequest;
import com.tiercache.v1.SetResponse;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Calls a running tiercache server through the Java code generated from proto/tiercache/v1
 * (clients/buf.gen.java.local.yaml) and checks every answer: Set, Get, a Get of a missing key,
 * GetOrSet on a cold key (a lease), Fill, and GetOrSet again (the filled value). Exits non-zero
 * on the first mismatch. scripts/check-clients.sh compiles and runs it: {@code java Smoke
 * 127.0.0.1:50051}.
 */
public final class Smoke {
    private static final String NAMESPACE = "smoke";
    private static final Duration MINUTE = Duration.newBuilder().setSeconds(60).build();

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 1) {
            System.err.println("usage: java Smoke HOST:PORT");
            System.exit(2);
        }
        ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
        int status = 0;
        try {
            int calls = run(CacheServiceGrpc.newBlockingStub(channel));
            System.out.println("java smoke: ok (" + calls + " calls against " + args[0] + ")");
        } catch (RuntimeException e) {
            System.err.println("java smoke: FAILED: " + e);
            status = 1;
        } finally {
            channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
        }
        System.exit(status);
    }

    private static int run(CacheServiceGrpc.CacheServiceBlockingStub stub) {
        CacheServiceGrpc.CacheServiceBlockingStub cache = stub.withDeadlineAfter(10, TimeUnit.SECONDS);
        int calls = 0;

        // Set, then Get the same entry back.
        ByteString value = ByteString.copyFromUtf8("hello from java");
        SetResponse set = cache.set(SetRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:user:42").setValue(value)
                .setTtl(MINUTE).addTags("java:team:7").build());
        calls++;
        check(set.getOutcome() == SetOutcome.SET_OUTCOME_STORED && set.getVersion() > 0,
                "Set: want STORED with a version", set);
        GetResponse got = cache.get(GetRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:user:42").build());
        calls++;
        check(got.getOutcome() == GetOutcome.GET_OUTCOME_HIT, "Get: want HIT", got);
        check(got.getEntry().getValue().equals(value)
                        && got.getEntry().getVersion() == set.getVersion()
                        && got.getEntry().getTagsList().equals(List.of("java:team:7")),
                "Get: want the value set at version " + set.getVersion() + " tagged java:team:7", got);

        // A key nobody wrote is a miss, not an error.
        GetResponse miss = cache.get(GetRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:nobody").build());
        calls++;
        check(miss.getOutcome() == GetOutcome.GET_OUTCOME_MISS && !miss.hasEntry(),
                "Get (missing key): want MISS without an entry", miss);

        // GetOrSet on a cold key hands this caller the lease; it computes and fills.
        GetOrSetResponse cold = cache.getOrSet(GetOrSetRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:report:7").build());
        calls++;
        check(cold.getOutcome() == GetOrSetOutcome.GET_OR_SET_OUTCOME_LEASE
                        && !cold.getLease().getToken().isEmpty(),
                "GetOrSet (cold): want LEASE with a token", cold);
        ByteString report = ByteString.copyFromUtf8("report 7, computed by java");
        FillResponse fill = cache.fill(FillRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:report:7")
                .setLeaseToken(cold.getLease().getToken()).setValue(report).setTtl(MINUTE).build());
        calls++;
        check(fill.getOutcome() == FillOutcome.FILL_OUTCOME_STORED && fill.getVersion() > 0,
                "Fill: want STORED with a version", fill);

        // The next GetOrSet finds the filled value.
        GetOrSetResponse warm = cache.getOrSet(GetOrSetRequest.newBuilder()
                .setNamespace(NAMESPACE).setKey("java:report:7").build());
        calls++;
        check(warm.getOutcome() == GetOrSetOutcome.GET_OR_SET_OUTCOME_HIT
                        && !warm.hasLease()
                        && warm.getEntry().getValue().equals(report)
                        && warm.getEntry().getVersion() == fill.getVersion(),
                "GetOrSet (warm): want HIT with the filled value at version " + fill.getVersion(), warm);
        return calls;
    }

    private static void check(boolean ok, String want, Object got) {
        if (!ok) {
            throw new IllegalStateException(want + ", got " + got);
        }
    }
}
