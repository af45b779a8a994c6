import sys,glob,re,collections
files=sorted(glob.glob(sys.argv[1]+'/*.txt'))
def parse(f):
    d={}
    for line in open(f):
        if line.startswith('#') or not line.strip(): continue
        k,v=line.rsplit(' ',1)
        try: d[k]=float(v)
        except: pass
    return d
snaps=[(f,parse(f)) for f in files]
def hist(d,name):
    b={}
    for k,v in d.items():
        if k.startswith(name+'_bucket'):
            le=re.search(r'le="([^"]+)"',k).group(1)
            b[le]=b.get(le,0)+v
    return b
names=['tracegate_request_duration_seconds','tracegate_kafka_delivery_duration_seconds']
for i in range(1,len(snaps)):
    a=snaps[i-1][1]; b=snaps[i][1]
    row=[]
    for n in names:
        ha=hist(a,n); hb=hist(b,n)
        tot=hb.get('+Inf',0)-ha.get('+Inf',0)
        over=lambda le: tot-(hb.get(le,0)-ha.get(le,0))
        row.append(f"{n.split('_')[1][:4]} n={tot:.0f} >5ms={over('0.005'):.0f} >10ms={over('0.01'):.0f} >25ms={over('0.025'):.0f}")
    g=[f"{k.split('{')[0].replace('tracegate_kafka_','')}={v*1000:.1f}ms" for k,v in b.items() if 'p99' in k]
    print(i,' | '.join(row),' '.join(g))
