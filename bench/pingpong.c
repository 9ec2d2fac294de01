/* How far apart this machine's first two CPUs are: a cache line passed back and forth between a thread pinned
 * to CPU 0 and one pinned to CPU 1, the mean round trip in ns. On this project's 2-vCPU VMs it reads ~60-100 ns
 * in some spells and ~300-400 ns in others (the vCPUs then sit on different dies); multi-threaded step times
 * follow it, so bench/ab.sh and bench/contention.sh print it beside their timings.
 * Build and run: cc -O2 -pthread -o target/pingpong bench/pingpong.c && target/pingpong */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define TRIPS 200000
static _Atomic long turn = 0;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *answer(void *unused) {
    (void)unused;
    pin(1);
    for (long i = 0; i < TRIPS; i++) {
        while (atomic_load(&turn) != 2 * i + 1) {}
        atomic_store(&turn, 2 * i + 2);
    }
    return NULL;
}

int main(void) {
    pthread_t other;
    struct timespec a, b;
    pin(0);
    pthread_create(&other, NULL, answer, NULL);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < TRIPS; i++) {
        atomic_store(&turn, 2 * i + 1);
        while (atomic_load(&turn) != 2 * i + 2) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(other, NULL);
    printf("{\"pingpong_ns\":%.0f}\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / TRIPS);
    return 0;
}
