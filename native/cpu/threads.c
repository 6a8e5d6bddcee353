/*
 * threads.c — a minimal fork-join thread pool for the CPU engine's matvecs.
 *
 * mk_pool_run(p, fn, arg) runs fn(arg, i, n) on every worker i in [0, n) and returns when all are done; the calling
 * thread is worker 0, so a pool of 1 is just a function call. Workers sleep on a condition variable between jobs
 * (no spinning: the engine must not burn cores while the user is typing).
 */
#include <pthread.h>
#include <stdlib.h>

#include "cpu.h"

struct mk_pool {
  int n;                 /* workers, including the caller */
  pthread_t *threads;    /* [n - 1] */
  pthread_mutex_t mu;
  pthread_cond_t start;  /* signalled when a job is posted (generation changes) or on shutdown */
  pthread_cond_t done;   /* signalled when the last worker finishes a job */
  mk_pool_fn fn;
  void *arg;
  uint64_t generation;   /* bumped for every job */
  int pending;           /* workers (other than the caller) still running the current job */
  int quit;
};

typedef struct { mk_pool *p; int i; } worker_arg;

static void *worker_main(void *varg) {
  worker_arg *wa = (worker_arg *)varg;
  mk_pool *p = wa->p;
  int i = wa->i;
  free(wa);
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->quit && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
    if (p->quit) break;
    seen = p->generation;
    mk_pool_fn fn = p->fn;
    void *arg = p->arg;
    pthread_mutex_unlock(&p->mu);
    fn(arg, i, p->n);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

mk_pool *mk_pool_create(int n_threads) {
  mk_pool *p = (mk_pool *)calloc(1, sizeof *p);
  if (!p) return NULL;
  p->n = n_threads < 1 ? 1 : n_threads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->start, NULL);
  pthread_cond_init(&p->done, NULL);
  p->threads = (pthread_t *)calloc((size_t)p->n, sizeof(pthread_t));
  if (!p->threads) { free(p); return NULL; }
  for (int i = 1; i < p->n; i++) {
    worker_arg *wa = (worker_arg *)malloc(sizeof *wa);
    if (wa) { wa->p = p; wa->i = i; }
    if (!wa || pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
      free(wa);
      p->n = i; /* keep the workers that did start; mk_pool_free joins them */
      mk_pool_free(p);
      return NULL;
    }
  }
  return p;
}

void mk_pool_run(mk_pool *p, mk_pool_fn fn, void *arg) {
  if (p->n == 1) { fn(arg, 0, 1); return; }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->pending = p->n - 1;
  p->generation++;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  fn(arg, 0, p->n);
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

int mk_pool_size(const mk_pool *p) { return p->n; }

void mk_pool_free(mk_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = 1;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->threads[i - 1], NULL);
  pthread_cond_destroy(&p->start);
  pthread_cond_destroy(&p->done);
  pthread_mutex_destroy(&p->mu);
  free(p->threads);
  free(p);
}
